"""Exact k-nearest-neighbour search: faiss (default) and a torch brute-force reference, in bounded memory.

Distances are squared Euclidean on the embeddings as given. The neighbour order is defined the same way in every
backend: by the backend's distance, then by reference index (smallest first), so ties are deterministic. When the
queries are reference rows (self-retrieval), each query is excluded **by its index**, never by dropping the first
column: with duplicated vectors another item may come before the query itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from oodml.errors import OodmlError, suggest
from oodml.eval.inputs import as_embeddings, to_numpy
from oodml.progress import progress
from oodml.registry import Registry

#: A search batch smaller than this is merged into the previous one: faiss switches from its BLAS kernel to a
#: direct one below 20 queries (`distance_compute_blas_threshold`), and one search should use one kernel.
MIN_BATCH = 20
#: Memory budget (bytes) for one batch's temporary arrays.
BATCH_BYTES = 256 << 20
#: Searches with at least this many query x reference pairs report progress.
PROGRESS_PAIRS = 500_000_000


@dataclass(frozen=True)
class KnnBackendInfo:
    """Registry metadata for a kNN backend."""

    name: str
    description: str
    module: str   # the Python module it needs
    install: str  # how to install that module
    dtype: str    # numpy dtype the inputs are converted to


@dataclass(frozen=True)
class Neighbors:
    """Result of `knn`: for each query its `k` nearest reference rows, nearest first (ties by index)."""

    distances: np.ndarray  # (n_queries, k) squared Euclidean distances, non-decreasing along each row
    indices: np.ndarray    # (n_queries, k) int64 reference row indices
    backend: str
    k: int


#: One search batch: queries [start, end) with their (end - start, k) distances and indices.
Batch = tuple[int, int, np.ndarray, np.ndarray]
#: search(reference, queries, k, exclude, rows) -> iterator of batches; `exclude[i]` is the reference row to leave
#: out for query i (self-retrieval) or None; `rows` is the query batch size (None: the backend's memory budget).
SearchFn = Callable[[np.ndarray, np.ndarray, int, "np.ndarray | None", "int | None"], Iterator[Batch]]

KNN_BACKENDS: Registry[KnnBackendInfo] = Registry("knn backend")


def knn(reference: Any, k: int, *, queries: Any = None, query_ids: Any = None, backend: str = "faiss",
        batch_size: int | None = None) -> Neighbors:
    """Exact kNN of queries among the reference rows.

    Args:
        reference: (N, D) embeddings, numpy array or torch tensor, any real dtype.
        k: neighbours per query; at most N (N - 1 for self-retrieval).
        queries: (M, D) separate query embeddings; nothing is excluded. Mutually exclusive with `query_ids`.
        query_ids: reference rows to use as queries (self-retrieval, each excluded by index); default: all rows
            when `queries` is None.
        backend: a name in `KNN_BACKENDS` ("faiss" or "torch").
        batch_size: queries per search batch; default: a 256 MiB budget per batch.

    Returns:
        A `Neighbors` with (M, k) distances and indices, ordered by distance then index.
    """
    m, it = knn_batches(reference, k, queries=queries, query_ids=query_ids, backend=backend, batch_size=batch_size)
    dist: np.ndarray | None = None
    idx = np.empty((m, k), dtype=np.int64)
    for s, e, d, i in it:
        if dist is None:
            dist = np.empty((m, k), dtype=d.dtype)
        dist[s:e], idx[s:e] = d, i
    return Neighbors(np.empty((0, k)) if dist is None else dist, idx, backend, k)


def knn_batches(reference: Any, k: int, *, queries: Any = None, query_ids: Any = None, backend: str = "faiss",
                batch_size: int | None = None) -> tuple[int, Iterator[Batch]]:
    """Like `knn`, but streaming: (number of queries, iterator of (start, end, distances, indices) batches).

    Consumers that reduce each batch (e.g. to per-query metrics) keep memory bounded at any N and k.
    """
    search, dtype = _backend(backend)
    ref = as_embeddings(reference, "reference", dtype)
    n = int(ref.shape[0])
    if queries is not None and query_ids is not None:
        raise OodmlError("pass either queries (a separate query set) or query_ids (self-retrieval), not both")
    if queries is not None:
        q = as_embeddings(queries, "queries", dtype)
        if q.shape[1] != ref.shape[1]:
            raise OodmlError(f"queries have dimension {q.shape[1]} but the reference has {ref.shape[1]}; "
                             "embed both with the same model")
        exclude = None
    else:
        ids = np.arange(n, dtype=np.int64) if query_ids is None else to_numpy(query_ids).astype(np.int64).ravel()
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            raise OodmlError(f"query_ids must index the {n} reference rows")
        q = ref if query_ids is None else ref[ids]
        exclude = ids
    available = n - (exclude is not None)
    if not 1 <= k <= available:
        raise OodmlError(f"k={k} neighbours requested but only {available} reference rows are available per query; "
                         f"choose 1 <= k <= {available}")
    if batch_size is not None and batch_size < 1:
        raise OodmlError(f"batch_size must be >= 1, got {batch_size}")
    return len(q), search(ref, q, k, exclude, batch_size)


def batches(n: int, rows: int) -> list[tuple[int, int]]:
    """Split range(n) into [start, end) batches of `rows`, merging a last batch smaller than MIN_BATCH."""
    rows = max(1, rows)
    bounds = [(s, min(s + rows, n)) for s in range(0, n, rows)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_BATCH:
        (s, _), (_, e) = bounds[-2], bounds[-1]
        bounds[-2:] = [(s, e)]
    return bounds


def order_by_distance_then_index(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index), the deterministic neighbour order of every backend."""
    order = np.lexsort((idx, dist), axis=-1)
    return np.take_along_axis(dist, order, -1), np.take_along_axis(idx, order, -1)


def drop_excluded(dist: np.ndarray, idx: np.ndarray, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove the excluded reference row of each query by index and keep k columns.

    `dist`/`idx` hold k + 1 neighbours per row. A row that contains its excluded index loses that entry; a row that
    does not (duplicates at equal distance pushed it out) loses its last entry.
    """
    drop = idx == exclude[:, None]
    drop[~drop.any(axis=1), -1] = True
    keep = ~drop
    return dist[keep].reshape(len(idx), k), idx[keep].reshape(len(idx), k)


def _backend(name: str) -> tuple[SearchFn, np.dtype]:
    if name not in KNN_BACKENDS:
        raise OodmlError(f"unknown knn backend {name!r}{suggest(name, KNN_BACKENDS.names())}; "
                         f"choose one of {', '.join(KNN_BACKENDS.names())}")
    entry = KNN_BACKENDS.get(name)
    _require(entry.info)
    return entry.factory, np.dtype(entry.info.dtype)


def _require(info: KnnBackendInfo) -> ModuleType:
    try:
        return importlib.import_module(info.module)
    except ImportError:
        raise OodmlError(f"knn backend {info.name!r} needs {info.module}, which is not installed; "
                         f"run `{info.install}` or choose another backend") from None


def _progress(n_queries: int, n_ref: int, bounds: list[tuple[int, int]], desc: str) -> AbstractContextManager[Any]:
    """A progress bar for big searches; small (episode) searches stay silent and yield None."""
    if n_queries * n_ref < PROGRESS_PAIRS or len(bounds) < 2:
        return nullcontext()
    return progress(desc, total=n_queries, unit="queries")


@KNN_BACKENDS.register(KnnBackendInfo("faiss", "exact search with faiss IndexFlatL2 (float32), batched",
                                      module="faiss", install="pip install faiss-cpu", dtype="float32"))
def faiss_search(reference: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None,
                 rows: int | None) -> Iterator[Batch]:
    """faiss `IndexFlatL2` search of (M, D) float32 queries, batch by batch; see `knn_batches`."""
    import faiss

    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)
    kk = k + (exclude is not None)
    m = len(queries)
    # ~64 bytes per neighbour covers the search output and a consumer's per-batch metric temporaries
    bounds = batches(m, rows or max(MIN_BATCH, min(16384, BATCH_BYTES // (64 * kk))))
    with _progress(m, len(reference), bounds, f"kNN faiss ({m} x {len(reference)}, k={k})") as p:
        for s, e in bounds:
            d, i = index.search(queries[s:e], kk)
            if exclude is not None:
                d, i = drop_excluded(d, i, exclude[s:e], k)
            yield (s, e, *order_by_distance_then_index(d, i))
            if p is not None:
                p.update(e - s)


@KNN_BACKENDS.register(KnnBackendInfo("torch", "brute-force reference: float64 distances from differences, "
                                      "stable full sort", module="torch", install="pip install torch",
                                      dtype="float64"))
def torch_search(reference: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None,
                 rows: int | None) -> Iterator[Batch]:
    """Brute force in torch (CPU, float64): distances from coordinate differences (not the |a|^2 + |b|^2 - 2ab
    expansion, so duplicates are at exactly 0), a stable sort of every full row; see `knn_batches`.

    O(M N D) time and a full (batch, N) sort: the obviously-right reference the faiss backend is tested against.
    """
    import torch

    ref = torch.from_numpy(reference)
    qry = torch.from_numpy(queries)
    n = ref.shape[0]
    m = len(qry)
    ex = None if exclude is None else torch.from_numpy(exclude)
    bounds = batches(m, rows or max(1, BATCH_BYTES // (3 * 8 * n)))
    with _progress(m, n, bounds, f"kNN torch ({m} x {n}, k={k})") as p:
        for s, e in bounds:
            sq = torch.cdist(qry[s:e], ref, compute_mode="donot_use_mm_for_euclid_dist").square()
            vals, order = torch.sort(sq, dim=1, stable=True)
            if ex is not None:
                keep = order != ex[s:e, None]
                vals, order = vals[keep].view(e - s, n - 1), order[keep].view(e - s, n - 1)
            yield s, e, vals[:, :k].numpy(), order[:, :k].numpy()
            if p is not None:
                p.update(e - s)
