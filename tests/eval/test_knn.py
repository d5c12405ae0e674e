"""kNN backends: self excluded by index, (distance, index) order, faiss vs torch up to ties (GUIDE §1.5, §6c)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws

from oodml.errors import OodmlError
from oodml.eval import KNN_BACKENDS, knn, knn_batches
from oodml.eval.knn import batches, drop_excluded
from tests.eval.reference import clustered, loop_neighbours

BACKENDS = KNN_BACKENDS.names()
# 1-D points: 1 and 2 are duplicates, 5 and 6 are duplicates
LINE = np.array([[0.0], [1.0], [1.0], [2.0], [5.0], [6.0], [6.0]])


def test_registry_lists_the_backends() -> None:
    assert BACKENDS == ["faiss", "symmetric", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_table_with_duplicates_and_ties(backend: str) -> None:
    nb = knn(LINE, 3, backend=backend)
    # item 2's duplicate (item 1, distance 0) comes first; the query itself is excluded by index
    assert nb.indices.tolist() == [[1, 2, 3], [2, 0, 3], [1, 0, 3], [1, 2, 0], [5, 6, 3], [6, 4, 3], [5, 4, 3]]
    assert nb.distances.tolist() == [[1, 1, 4], [0, 1, 1], [0, 1, 1], [1, 1, 4], [1, 1, 9], [0, 1, 16], [0, 1, 16]]
    assert nb.k == 3 and nb.backend == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_includes_query(backend: str) -> None:
    """As a separate query set the query is its own (tied) nearest item; in self-retrieval it never appears."""
    sep = knn(LINE, 2, queries=LINE, backend=backend)
    assert sep.indices[2].tolist() == [1, 2] and sep.indices[1].tolist() == [1, 2]
    assert sep.indices[0].tolist() == [0, 1]
    own = knn(LINE, 6, backend=backend).indices
    assert all(i not in own[i] for i in range(len(LINE)))
    assert sorted(own[6].tolist()) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_duplicates_push_self_out(backend: str) -> None:
    """Ten identical vectors: with k=3 each query's 3 neighbours are the lowest other indices."""
    x = np.zeros((10, 4))
    nb = knn(x, 3, backend=backend)
    for i in range(10):
        assert nb.indices[i].tolist() == [j for j in range(10) if j != i][:3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_grid_matches_loop_order_exactly(backend: str) -> None:
    """Small integer coordinates: distances are exact, so ties are real; the order is (distance, index)."""
    x = np.random.default_rng(3).integers(0, 3, size=(60, 2)).astype(np.float32)
    nb = knn(x, 59, backend=backend)
    for i in range(len(x)):
        assert nb.indices[i].tolist() == loop_neighbours(x, i)


@pytest.mark.parametrize("k", [1, 5, 120])  # heap (k < 100) and reservoir (k >= 100) paths in faiss
@pytest.mark.parametrize("backend", ["faiss", "symmetric"])
def test_float32_backends_and_torch_agree_up_to_ties(k: int, backend: str) -> None:
    x, _ = clustered(12, 300, 16, seed=1)
    ref = knn(x, k, backend="torch")
    new = knn(x, k, backend=backend)
    check_ref_knn_with_draws(ref.distances, ref.indices, new.distances, new.indices, rtol=1e-4)
    tied = np.random.default_rng(0).integers(0, 4, size=(300, 3)).astype(np.float64)
    ref, new = knn(tied, k, backend="torch"), knn(tied, k, backend=backend)
    check_ref_knn_with_draws(ref.distances, ref.indices, new.distances, new.indices)
    np.testing.assert_array_equal(ref.indices, new.indices)  # exact ties are also ordered alike


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_ids_and_separate_queries(backend: str) -> None:
    x, _ = clustered(5, 80, 6, seed=2)
    full = knn(x, 7, backend=backend)
    sub = knn(x, 7, query_ids=[3, 10, 79], backend=backend)
    np.testing.assert_array_equal(sub.indices, full.indices[[3, 10, 79]])
    sep = knn(x[:50], 4, queries=x[50:], backend=backend)
    for row, q in zip(sep.indices, x[50:]):
        d = ((x[:50] - q) ** 2).sum(1)
        assert row.tolist() == sorted(range(50), key=lambda j: (d[j], j))[:4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batching_does_not_change_results(backend: str) -> None:
    x, _ = clustered(10, 257, 8, seed=4)
    whole = knn(x, 9, backend=backend)
    for bs in (1, 21, 64):
        part = knn(x, 9, backend=backend, batch_size=bs)
        np.testing.assert_array_equal(part.indices, whole.indices)


def test_batches_merge_small_tail() -> None:
    assert batches(95, 40) == [(0, 40), (40, 95)]  # a 15-row tail joins the previous batch
    assert batches(100, 40) == [(0, 40), (40, 80), (80, 100)]
    assert batches(100, 30) == [(0, 30), (30, 60), (60, 100)]
    assert batches(5, 64) == [(0, 5)]
    assert batches(130, 50) == [(0, 50), (50, 100), (100, 130)]


def test_drop_excluded_by_index_not_column() -> None:
    d = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]])
    i = np.array([[4, 0, 7], [1, 2, 3]])      # row 0: self (0) second; row 1: self (9) absent
    dd, ii = drop_excluded(d, i, np.array([0, 9]), 2)
    assert ii.tolist() == [[4, 7], [1, 2]] and dd.tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_inputs_torch_and_dtypes() -> None:
    torch = pytest.importorskip("torch")
    x, _ = clustered(6, 90, 5, seed=5)
    base = knn(x.astype(np.float32), 4).indices
    for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        t = torch.as_tensor(x).to(dt)
        exact = t.float().numpy()
        np.testing.assert_array_equal(knn(t, 4).indices, knn(exact, 4).indices)
    np.testing.assert_array_equal(knn(x.astype(np.float32), 4).indices, base)


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 7}, "k=7 neighbours requested but only 6"),
    ({"k": 0}, "1 <= k"),
    ({"k": 2, "backend": "fais"}, "unknown knn backend 'fais' \\(did you mean faiss"),
    ({"k": 2, "batch_size": 0}, "batch_size"),
    ({"k": 2, "query_ids": [0, 7]}, "query_ids must index"),
    ({"k": 2, "queries": np.zeros((2, 3))}, "dimension 3"),
    ({"k": 2, "queries": LINE, "query_ids": [0]}, "not both"),
])
def test_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(OodmlError, match=match):
        knn(LINE, **kwargs)


def test_bad_embeddings() -> None:
    with pytest.raises(OodmlError, match="NaN or inf"):
        knn(np.array([[0.0], [np.nan]]), 1)
    with pytest.raises(OodmlError, match="2-D"):
        knn(np.zeros(5), 1)
    with pytest.raises(OodmlError, match="empty"):
        knn(np.zeros((0, 3)), 1)


def test_missing_backend_module_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(OodmlError, match="pip install faiss-cpu"):
        knn(LINE, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_batches_stream_the_same_rows(backend: str) -> None:
    x, _ = clustered(8, 130, 6, seed=6)
    whole = knn(x, 5, backend=backend)
    m, it = knn_batches(x, 5, backend=backend, batch_size=40)
    seen = []
    for s, e, d, i in it:
        assert d.shape == i.shape == (e - s, 5)
        np.testing.assert_array_equal(i, whole.indices[s:e])
        seen.append((s, e))
    assert m == 130 and seen == [(0, 40), (40, 80), (80, 130)]  # the 10-row tail joins the last batch
