"""Symmetric-block self-kNN: the same neighbours and (distance, index) order as the faiss path, each pair's distance
computed once, at block sizes that split every test set into several blocks (and tails that are not multiples)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws

from oodml.eval import knn, retrieval_metrics
from oodml.eval.retrieval import retrieval_per_query
from tests.eval.reference import clustered, loop_neighbours, loop_retrieval
from tests.eval.test_knn import LINE

knn_module = importlib.import_module("oodml.eval.knn")  # `oodml.eval.knn` the attribute is the function

# (rows per block, rows per diagonal sub-block): every test set below spans several blocks, with ragged tails
BLOCKS = [(5, 2), (16, 4), (64, 16), (2048, 256)]


@pytest.fixture(params=BLOCKS, ids=[f"block{b}-sub{s}" for b, s in BLOCKS])
def blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    block, sub = request.param
    monkeypatch.setattr(knn_module, "SYMMETRIC_BLOCK", block)
    monkeypatch.setattr(knn_module, "DIAG_SUB", sub)
    yield block


def brute(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows by (distance, index) on exact float64 distances (exact for small integers)."""
    x = x.astype(np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), order


def test_hand_table_with_duplicates_and_ties(blocks: int) -> None:
    nb = knn(LINE, 3, backend="symmetric")
    assert nb.indices.tolist() == [[1, 2, 3], [2, 0, 3], [1, 0, 3], [1, 2, 0], [5, 6, 3], [6, 4, 3], [5, 4, 3]]
    assert nb.distances.tolist() == [[1, 1, 4], [0, 1, 1], [0, 1, 1], [1, 1, 4], [1, 1, 9], [0, 1, 16], [0, 1, 16]]
    assert nb.distances.dtype == np.float32 and nb.indices.dtype == np.int64


@pytest.mark.parametrize("k", [1, 2, 7, 29])
def test_duplicate_vectors_keep_the_lowest_indices(blocks: int, k: int) -> None:
    """Three vectors, each repeated ten times in shuffled positions: ties everywhere, k below and above the number
    of duplicates; the order is (distance, index) exactly."""
    rng = np.random.default_rng(0)
    x = np.repeat(np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]]), 10, axis=0)[rng.permutation(30)]
    nb = knn(x, k, backend="symmetric")
    d, i = brute(x, k)
    np.testing.assert_array_equal(nb.indices, i)
    np.testing.assert_array_equal(nb.distances, d)


@pytest.mark.parametrize("n", [61, 100, 129])  # not multiples of any block size
def test_integer_grid_matches_loop_order_exactly(blocks: int, n: int) -> None:
    x = np.random.default_rng(n).integers(0, 3, size=(n, 2)).astype(np.float32)
    nb = knn(x, n - 1, backend="symmetric")  # k larger than every block: rows fill across blocks
    for i in range(0, n, 7):
        assert nb.indices[i].tolist() == loop_neighbours(x, i)
    d, i = brute(x, 5)
    np.testing.assert_array_equal(knn(x, 5, backend="symmetric").indices, i)


@pytest.mark.parametrize("normalise", [True, False])  # inner-product screen (equal norms) / distance screen
def test_each_distance_is_one_number_for_both_directions(blocks: int, normalise: bool) -> None:
    """Float32 rounding: with every neighbour listed, d(i, j) and d(j, i) are the same bits (one computation)."""
    x, _ = clustered(6, 97, 24, seed=7)
    if normalise:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    nb = knn(x, 96, backend="symmetric")
    full = np.full((97, 97), np.nan, dtype=np.float32)
    np.put_along_axis(full, nb.indices, nb.distances, axis=1)
    np.fill_diagonal(full, 0)
    np.testing.assert_array_equal(full.view(np.uint32), full.T.view(np.uint32))
    assert (np.diff(nb.distances, axis=1) >= 0).all()


@pytest.mark.parametrize("normalise", [True, False])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_same_neighbours_as_faiss_and_torch(blocks: int, normalise: bool, k: int) -> None:
    x, _ = clustered(12, 160, 16, seed=1)
    if normalise:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    new = knn(x, k, backend="symmetric")
    ref = knn(x, k, backend="torch")
    check_ref_knn_with_draws(ref.distances, ref.indices, new.distances, new.indices, rtol=1e-4)
    flat = knn(x, k, backend="faiss")  # IndexFlatL2 at 160 rows: faiss' own float32 distances
    np.testing.assert_array_equal(new.indices, flat.indices)
    np.testing.assert_allclose(new.distances, flat.distances, rtol=1e-5, atol=1e-4)  # a few float32 ulps


def test_k_larger_than_the_classes_gives_the_reference_metrics(blocks: int) -> None:
    """Classes of 1 to ~10 items, metrics that need more neighbours than any class holds (recall@16)."""
    x, y = clustered(30, 150, 5, seed=3, spread=0.8)
    x = np.round(x * 4) / 4  # quarter steps: exact float32 distances, real ties
    expected = loop_retrieval(x, y, (1, 2, 16))
    got = retrieval_metrics(x, y, (1, 2, 16), backend="symmetric")
    for name in ("recall@1", "recall@2", "recall@16", "map@r", "n_queries", "n_excluded"):
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name
    assert got["knn_backend"] == "symmetric"


def test_query_ids_and_batches_take_rows_of_the_full_search(blocks: int) -> None:
    x, _ = clustered(5, 120, 6, seed=2)
    full = knn(x, 7, backend="symmetric")
    sub = knn(x, 7, query_ids=[3, 10, 119, 3], backend="symmetric")
    np.testing.assert_array_equal(sub.indices, full.indices[[3, 10, 119, 3]])
    np.testing.assert_array_equal(knn(x, 7, backend="symmetric", batch_size=21).indices, full.indices)
    sep = knn(x[:60], 4, queries=x[60:], backend="symmetric")  # separate queries: no symmetry, faiss
    np.testing.assert_array_equal(sep.indices, knn(x[:60], 4, queries=x[60:], backend="faiss").indices)


def test_faiss_backend_hands_large_self_retrievals_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above SYMMETRIC_MIN_ROWS the faiss backend runs the symmetric blocks: same neighbours and metric values as
    IndexFlatL2 on these data, recorded as faiss."""
    x, y = clustered(40, 400, 128, seed=5)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flat = retrieval_per_query(x, y)
    flat_nb = knn(x, 9)
    monkeypatch.setattr(knn_module, "SYMMETRIC_MIN_ROWS", 100)
    monkeypatch.setattr(knn_module, "SYMMETRIC_BLOCK", 64)
    calls: list[int] = []
    real = knn_module.symmetric_self_knn
    monkeypatch.setattr(knn_module, "symmetric_self_knn", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    blocked = retrieval_per_query(x, y)
    assert calls and blocked.knn_backend == "faiss"
    np.testing.assert_array_equal(blocked.values, flat.values)
    np.testing.assert_array_equal(knn(x, 9).indices, flat_nb.indices)
    assert knn_module.use_symmetric(400, 400, 9, 128) and not knn_module.use_symmetric(400, 100, 9, 128)
    assert not knn_module.use_symmetric(99, 99, 9, 128) and not knn_module.use_symmetric(400, 400, 17, 128)
    assert not knn_module.use_symmetric(400, 400, 9, 32) and not knn_module.use_symmetric(400, 400, 40, 128)


def test_keys_order_by_distance_then_index() -> None:
    d = np.array([0.0, 0.0, 1e-30, 0.5, 0.5, np.inf], dtype=np.float32)
    i = np.array([7, 9, 1, 2, 3, 0], dtype=np.int64)
    keys = (d.view(np.uint32).astype(np.uint64) << np.uint64(32)) | i.astype(np.uint64)
    perm = np.random.default_rng(0).permutation(6)
    dd, ii = knn_module.decode_keys(np.sort(keys[perm]))
    np.testing.assert_array_equal(dd, d)
    np.testing.assert_array_equal(ii, i)


def test_screens_with_outliers(blocks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tight clusters and far outliers on the unit sphere (rows' k-th distances differ by orders of magnitude): the
    one-bound screen kept or redone per row and column gives the same bits, and the neighbours of the reference."""
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(8, 32))
    tight = centers[rng.integers(0, 8, 150)] + 0.05 * rng.normal(size=(150, 32))
    x = np.concatenate([tight, rng.normal(size=(20, 32))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True))[rng.permutation(170)].astype(np.float32)
    runs = []
    for loose in (1, 10**9):  # never / always redone
        monkeypatch.setattr(knn_module, "LOOSE_SCREEN", loose)
        runs.append(knn(x, 6, backend="symmetric"))
    np.testing.assert_array_equal(runs[0].indices, runs[1].indices)
    np.testing.assert_array_equal(runs[0].distances.view(np.uint32), runs[1].distances.view(np.uint32))
    ref = knn(x, 6, backend="torch")
    # rtol: the float32 expansion's error is a few ulps of |a|^2 + |b|^2 = 2, ~1e-4 of these small distances
    check_ref_knn_with_draws(ref.distances, ref.indices, runs[0].distances, runs[0].indices, rtol=1e-3)
