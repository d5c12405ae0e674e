"""Subset retrieval from one shared search equals `retrieval_metrics` on the subset alone (exactly where the
distances are exact: integer coordinates, or the torch backend's difference-based float64 distances)."""

from __future__ import annotations

import numpy as np
import pytest

from oodml.errors import OodmlError
from oodml.eval import knn, knn_batches, retrieval_metrics
from oodml.eval.subsets import SubsetRetrieval, first_members, subset_retrieval_metrics
from tests.eval.reference import clustered

KS = (1, 2, 4, 8)


def test_first_members_hand_table() -> None:
    member = np.array([True, False, True, True, False, True])
    idx = np.array([[1, 2, 4, 3, 5], [0, 1, 4, 5, 2], [4, 1, 5, 0, 3]])
    np.testing.assert_array_equal(first_members(idx, member, 2), [[2, 3], [0, 5], [5, 0]])
    with pytest.raises(OodmlError, match="fewer than 4"):
        first_members(idx, member, 4)


def subsets(y: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Episode-like subsets: drop a few items of every class, keep some classes only, keep a singleton class."""
    n = len(y)
    out = [np.ones(n, dtype=bool)]
    for drop in (1, 3):
        m = np.ones(n, dtype=bool)
        for c in np.unique(y):
            m[rng.choice(np.flatnonzero(y == c), size=min(drop, int((y == c).sum()) - 1), replace=False)] = False
        out.append(m)
    keep = np.isin(y, np.unique(y)[::2])
    single = np.flatnonzero(y == np.unique(y)[1])[:1]
    keep[single] = True  # a class with one member: counted in n_excluded, still a neighbour of the others
    out.append(keep)
    return out


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_equals_retrieval_on_the_subset_with_exact_distances(backend: str) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(9), rng.integers(4, 12, size=9))
    x = rng.integers(0, 4, size=(len(y), 3)).astype(np.float32) + 3 * y[:, None] % 5  # exact distances, many ties
    for member in subsets(y, rng):
        acc = SubsetRetrieval(y, member, KS, backend=backend)
        nb = knn(x, acc.depth, backend=backend, batch_size=23)  # several batches, the last one merged
        got = subset_retrieval_metrics(nb.indices, y, member, KS, backend=backend)
        assert got == retrieval_metrics(x[member], y[member], KS, backend=backend)


def test_equals_retrieval_on_random_floats_with_torch_distances() -> None:
    x, y = clustered(7, 150, 5, seed=3)
    rng = np.random.default_rng(1)
    for member in subsets(y, rng):
        acc = SubsetRetrieval(y, np.flatnonzero(member), KS, backend="torch")  # indices work like the mask
        for s, e, _, idx in knn_batches(x, acc.depth, backend="torch", batch_size=40)[1]:
            acc.update(s, e, idx)
        assert acc.result() == retrieval_metrics(x[member], y[member], KS, backend="torch")


def test_batches_in_order_and_deep_enough() -> None:
    x, y = clustered(4, 60, 3, seed=0)
    member = np.arange(60) % 3 != 0
    acc = SubsetRetrieval(y, member, KS)
    assert acc.depth == min(59, acc.knn_k + 20)
    idx = knn(x, acc.depth).indices
    with pytest.raises(OodmlError, match="too few"):
        acc.update(0, 60, idx[:, : acc.depth - 1])
    with pytest.raises(OodmlError, match="in order"):
        acc.update(10, 60, idx[10:])
    acc.update(0, 30, idx[:30])
    with pytest.raises(OodmlError, match="only 30 of 60"):
        acc.result()
    acc.update(30, 60, idx[30:])
    assert acc.result()["n_queries"] == 40


def test_subset_without_a_query_is_an_error() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    with pytest.raises(OodmlError, match="no query has another item"):
        SubsetRetrieval(y, np.array([True, False, True, False, True, False]))


def test_faiss_lists_differ_from_a_subset_search_only_by_rounding() -> None:
    """faiss float32 distances depend on the database layout by rounding, so near-equal neighbours may swap; every
    position where the shared lists differ from a faiss search over the subset holds two (almost) equidistant items.
    Each point has a twin 1e-4 away, so such swaps do occur."""
    x, y = clustered(20, 650, 256, seed=5, spread=2.0)
    rng = np.random.default_rng(3)
    x = (np.concatenate([x, x + rng.normal(0, 1e-4, size=x.shape)]) + 5).astype(np.float32)
    y = np.concatenate([y, y])
    member = rng.random(len(y)) < 0.8
    acc = SubsetRetrieval(y, member)
    deep = knn(x, acc.depth)
    pos = np.cumsum(member) - 1
    got = pos[first_members(deep.indices[member], member, acc.knn_k)]
    ref = knn(x[member], acc.knn_k)
    xs = x[member].astype(np.float64)
    rows, cols = np.nonzero(got != ref.indices)
    assert 0 < len(rows) < 0.05 * got.size
    d_got = ((xs[rows] - xs[got[rows, cols]]) ** 2).sum(1)
    d_ref = ((xs[rows] - xs[ref.indices[rows, cols]]) ** 2).sum(1)
    np.testing.assert_allclose(d_got, d_ref, rtol=1e-4)  # float32 error of |x|^2 + |y|^2 - 2xy here: ~2e-5
