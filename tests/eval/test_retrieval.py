"""retrieval_metrics: hand table, loop reference to 1e-12, backends, k choice, inputs, determinism (GUIDE §6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oodml.errors import OodmlError
from oodml.eval import KNN_BACKENDS, needed_k, retrieval_metrics
from tests.conftest import TEST_DTYPES
from tests.eval.reference import clustered, loop_retrieval

BACKENDS = KNN_BACKENDS.names()

# 1-D points. A = {0, 2, 3}, B = {1, 5, 6}, C = {4} (singleton). 1/2 and 5/6 are duplicates.
X = np.array([[0.0], [1.0], [1.0], [2.0], [5.0], [6.0], [6.0]])
Y = np.array(["A", "B", "A", "A", "C", "B", "B"])
# Worked out by hand, neighbours ordered by (squared distance, index):
#   q0 (A): 1B(1) 2A(1) 3A(4) 4C 5B 6B   R=2: miss hit -> AP 1/4; the tie 1B/2A is broken by index
#   q1 (B): 2A(0) 0A(1) 3A(1) 4C 5B 6B   R=2: miss miss -> 0; first B at rank 5
#   q2 (A): 1B(0) 0A(1) 3A(1) 4C 5B 6B   R=2: miss hit -> 1/4; its duplicate 1 precedes it, it is still excluded
#   q3 (A): 1B(1) 2A(1) 0A(4) 4C 5B 6B   R=2: miss hit -> 1/4
#   q4 (C): singleton, excluded
#   q5 (B): 6B(0) 4C(1) 3A(16) 1B(25) 2A(25) 0A   R=2: hit miss -> 1/2
#   q6 (B): 5B(0) 4C(1) 3A(16) 1B(25) 2A(25) 0A   R=2: hit miss -> 1/2
HAND = {
    "recall@1": 2 / 6, "recall@2": 5 / 6, "recall@3": 5 / 6, "recall@4": 5 / 6, "recall@8": 1.0,
    "map@r": (0.25 + 0 + 0.25 + 0.25 + 0.5 + 0.5) / 6, "n_queries": 6, "n_excluded": 1, "knn_k": 6,
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_table(backend: str) -> None:
    out = retrieval_metrics(X, Y, ks=(1, 2, 3, 4, 8), backend=backend)
    assert out == pytest.approx({**HAND, "knn_backend": backend}, abs=1e-15)
    assert json.loads(json.dumps(out)) == out  # plain Python scalars: the runner stores them as JSON
    assert all(type(out[key]) is float for key in ("recall@1", "map@r")) and type(out["knn_k"]) is int
    assert set(retrieval_metrics(X, Y, backend=backend)) == {
        "recall@1", "recall@2", "recall@4", "recall@8", "map@r", "n_queries", "n_excluded", "knn_backend", "knn_k"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_data_against_loop_reference(backend: str, seed: int) -> None:
    x, y = clustered(n_classes=25, n=120, dim=5, seed=seed)
    y[-1] = 25  # a singleton class
    x = x.astype(np.float32).astype(np.float64)  # the values faiss sees
    ks = (1, 2, 4, 8, 16)
    ref = loop_retrieval(x, y.tolist(), ks)
    out = retrieval_metrics(x, y, ks, backend=backend)
    assert ref["n_excluded"] > 0  # the random layout has singleton classes
    for key, val in ref.items():
        assert abs(out[key] - val) <= 1e-12, key


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_unset_equal_and_above_largest_class(backend: str) -> None:
    x, y = clustered(n_classes=8, n=70, dim=4, seed=7)
    largest = int(np.bincount(y).max())
    base = retrieval_metrics(x, y, ks=(1, 2), backend=backend)
    assert base["knn_k"] == largest - 1 == needed_k((1, 2), np.bincount(y))
    for k in (largest, largest + 5, 10_000):
        out = retrieval_metrics(x, y, ks=(1, 2), backend=backend, k=k)
        assert out["knn_k"] == min(k, len(x) - 1)
        assert {m: out[m] for m in ("recall@1", "recall@2", "map@r")} == \
            {m: base[m] for m in ("recall@1", "recall@2", "map@r")}
    with pytest.raises(OodmlError, match=f"need k >= {largest - 1}"):
        retrieval_metrics(x, y, ks=(1, 2), backend=backend, k=largest - 2)


def test_knn_k_covers_the_largest_recall_cutoff() -> None:
    out = retrieval_metrics(X, Y, ks=(1, 2))
    assert out["knn_k"] == 2
    x, y = clustered(n_classes=40, n=200, dim=4, seed=8)
    assert retrieval_metrics(x, y, ks=(1, 32))["knn_k"] == max(32, int(np.bincount(y).max()) - 1)


def test_faiss_and_torch_metrics_agree() -> None:
    x, y = clustered(n_classes=30, n=400, dim=12, seed=9)
    a = retrieval_metrics(x, y, backend="faiss")
    b = retrieval_metrics(x, y, backend="torch")
    assert {k: v for k, v in a.items() if k != "knn_backend"} == {k: v for k, v in b.items() if k != "knn_backend"}


def test_agrees_with_pytorch_metric_learning() -> None:
    torch = pytest.importorskip("torch")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, y = clustered(n_classes=30, n=300, dim=8, seed=10)
    x = x.astype(np.float32)
    keep = np.bincount(y)[y] > 1  # PML counts singleton queries as misses; oodml leaves them out
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    t = torch.from_numpy(x[keep])
    pml = calc.get_accuracy(t, torch.from_numpy(y[keep]), ref_includes_query=True)
    ours = retrieval_metrics(x, y)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)


@pytest.mark.parametrize("dtype", TEST_DTYPES + ["bfloat16", "float16"])
def test_torch_inputs_any_float_dtype(dtype: object) -> None:
    torch = pytest.importorskip("torch")
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    x, y = clustered(n_classes=10, n=80, dim=6, seed=11)
    t = torch.as_tensor(x).to(dt)
    out = retrieval_metrics(t, torch.as_tensor(y))
    assert out == retrieval_metrics(t.float().numpy(), y)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
def test_numpy_inputs_any_dtype(dtype: type) -> None:
    x, y = clustered(n_classes=10, n=80, dim=6, seed=12)
    xd = (x * 10).astype(dtype)
    assert retrieval_metrics(xd, y) == retrieval_metrics(xd.astype(np.float32), y)


def test_deterministic_and_batch_independent() -> None:
    x, y = clustered(n_classes=50, n=500, dim=16, seed=13)
    a = retrieval_metrics(x, y)
    assert retrieval_metrics(x.copy(), y.copy()) == a
    assert retrieval_metrics(x, y, batch_size=37) == a


def test_numpy_path_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, numpy as np; import oodml.eval as e; x = np.random.default_rng(0).normal(size=(30, 4)); "
            "e.retrieval_metrics(x, np.arange(30) % 3); e.nmi(x, np.arange(30) % 3); "
            "e.prototype_accuracy(x, np.arange(30) % 3, x, np.arange(30) % 3); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_errors() -> None:
    with pytest.raises(OodmlError, match="no query has another item"):
        retrieval_metrics(np.eye(3), [0, 1, 2])
    with pytest.raises(OodmlError, match="one label per row"):
        retrieval_metrics(X, Y[:-1])
    with pytest.raises(OodmlError, match="distinct integers >= 1"):
        retrieval_metrics(X, Y, ks=(0, 1))
    with pytest.raises(OodmlError, match="distinct integers"):
        retrieval_metrics(X, Y, ks=(1, 1))
