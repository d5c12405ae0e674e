"""Real data: MNIST test digits (raw pixels) from ../shared/data, faiss vs torch vs pytorch-metric-learning."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws

from oodml.eval import knn, nmi, prototype_accuracy, retrieval_metrics


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian header: magic, then one int32 per dimension) as a uint8 array."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def mnist_test(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 3,000 MNIST test digits as (3000, 784) float32 in [0, 1] and their labels."""
    x = read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")[:3000].reshape(3000, -1)
    y = read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")[:3000]
    return (x / np.float32(255)).astype(np.float32), y.astype(np.int64)


@pytest.mark.data
def test_mnist_retrieval_matches_pml(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, y = mnist_test
    out = retrieval_metrics(x, y)
    assert out["knn_k"] == np.bincount(y).max() - 1 and out["n_excluded"] == 0
    assert 0.9 < out["recall@1"] < out["recall@8"] <= 1.0   # 1-NN on raw pixels is a strong digit classifier
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    pml = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y), ref_includes_query=True)
    assert out["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert out["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)


@pytest.mark.data
def test_mnist_faiss_vs_torch_up_to_ties(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = mnist_test[0][:800], mnist_test[1][:800]
    ref, new = knn(x, 50, backend="torch"), knn(x, 50, backend="faiss")
    check_ref_knn_with_draws(ref.distances, ref.indices, new.distances, new.indices, rtol=1e-4)
    a, b = retrieval_metrics(x, y, backend="faiss"), retrieval_metrics(x, y, backend="torch")
    assert a["knn_k"] == b["knn_k"] == np.bincount(y).max() - 1
    # float32 (faiss) vs float64 (torch) distances may swap near-equal neighbours deep in a class's R ranks
    for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r"):
        assert a[key] == pytest.approx(b[key], abs=1e-4), key


@pytest.mark.data
def test_mnist_nmi_and_prototypes(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = mnist_test
    value = nmi(x, y, seed=0)
    assert 0.3 < value < 0.8 and nmi(x, y, seed=0) == value  # k-means on raw pixels: partial agreement
    support = np.concatenate([np.flatnonzero(y == c)[:5] for c in range(10)])
    query = np.setdiff1d(np.arange(len(y)), support)
    acc = prototype_accuracy(x[support], y[support], x[query], y[query])
    assert 0.5 < acc < 0.95  # 5-shot 10-way nearest class mean on pixels
