"""Exact k-nearest-neighbour search: faiss (default), symmetric blocks, a torch brute-force reference; bounded memory.

Distances are squared Euclidean on the embeddings as given. The neighbour order is defined the same way in every
backend: by the backend's distance, then by reference index (smallest first), so ties are deterministic. When the
queries are reference rows (self-retrieval), each query is excluded **by its index**, never by dropping the first
column: with duplicated vectors another item may come before the query itself.

Self-retrieval over (most of) the reference set is a symmetric problem: the `symmetric` backend computes each pair
of row blocks once (one BLAS product X_i X_j^T) and merges that block into the neighbour lists of both its rows and
its columns, half of faiss' arithmetic for the same (distance, index) order; the `faiss` backend hands large
self-retrievals to it (`use_symmetric`). See docs/architecture.md.
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
#: Rows per block of the symmetric self-kNN: one block pair is a (BLOCK, BLOCK) float32 product (16 MiB).
SYMMETRIC_BLOCK = 2048
#: The faiss backend hands a self-retrieval over at least this many rows to the symmetric blocks (`use_symmetric`).
#: Speed-up over IndexFlatL2, one thread, 512-d, k = 8 (CPU time): 1.0x at 1,000 rows, 1.16x at 2,000, 1.5x at
#: 6,000, 1.9x at 60,502 (benchmarks/eval.py); at 8,000 rows it is 1.0-1.3x at 128-d, 1.5-1.8x at 512-1,280-d.
SYMMETRIC_MIN_ROWS = 2048
#: Rows per sub-block of a diagonal block (at least 4 k): small diagonal sub-blocks start every row's list cheaply.
DIAG_SUB = 256
#: A one-bound screen that passes more than 1/LOOSE_SCREEN of a block is redone with each row's and column's bound.
LOOSE_SCREEN = 64
#: Relative spread of the row norms up to which the symmetric path filters candidates on the inner products alone.
NORM_SPREAD = 1e-4
#: A neighbour key: float32 distance bits (high 32 bits) and reference index (low 32): ordering keys is ordering by
#: (distance, index), since non-negative float32s order like their bit patterns. The sentinel is "no neighbour".
_NONE = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


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
        backend: a name in `KNN_BACKENDS`: "faiss" (default; large self-retrievals by symmetric blocks), "symmetric"
            (self-retrieval always by symmetric blocks) or "torch" (float64 reference).
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


@KNN_BACKENDS.register(KnnBackendInfo("faiss", "exact search with faiss IndexFlatL2 (float32), batched; large "
                                      "self-retrievals by symmetric blocks", module="faiss",
                                      install="pip install faiss-cpu", dtype="float32"))
def faiss_search(reference: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None,
                 rows: int | None) -> Iterator[Batch]:
    """faiss `IndexFlatL2` search of (M, D) float32 queries, batch by batch; see `knn_batches`.

    A self-retrieval where the symmetric blocks win (`use_symmetric`) is `symmetric_search` instead: the same
    float32 distance formula and (distance, index) order, each pair's distance computed once. IndexFlatL2 computes
    d(i, j) and d(j, i) separately, and they can differ in the last bit, so neighbours within one ulp may swap.
    """
    if exclude is not None and use_symmetric(len(reference), len(exclude), k, reference.shape[1]):
        yield from symmetric_search(reference, queries, k, exclude, rows)
        return
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


def use_symmetric(n: int, m: int, k: int, dim: int) -> bool:
    """Whether a self-retrieval of `m` of `n` rows of dimension `dim` at `k` neighbours runs faster by symmetric
    blocks: enough rows, most of them queries (every row's list is built), the product (not the merging) the larger
    cost (dim >= 128, k <= dim / 4, k well below a block), and the (n, k) neighbour keys within the batch budget."""
    return (n >= SYMMETRIC_MIN_ROWS and 2 * m >= n and dim >= 128 and 4 * k <= min(dim, SYMMETRIC_BLOCK)
            and n * k * 8 <= BATCH_BYTES)


@KNN_BACKENDS.register(KnnBackendInfo("symmetric", "self-retrieval by symmetric blocks: each pair of row blocks "
                                      "once (BLAS), faiss' float32 distances; separate queries go to faiss",
                                      module="faiss", install="pip install faiss-cpu", dtype="float32"))
def symmetric_search(reference: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None,
                     rows: int | None) -> Iterator[Batch]:
    """Self-retrieval by `symmetric_self_knn`, then the query rows (`exclude`) batch by batch; see `knn_batches`.

    Separate queries (`exclude` None) have no symmetry to use: they are searched by faiss.
    """
    if exclude is None:
        yield from faiss_search(reference, queries, k, None, rows)
        return
    n = len(reference)
    blocks = [(s, min(s + SYMMETRIC_BLOCK, n)) for s in range(0, n, SYMMETRIC_BLOCK)]
    with _progress(n, n, blocks, f"kNN symmetric ({n} x {n}, k={k})") as p:
        keys = symmetric_self_knn(reference, k, SYMMETRIC_BLOCK, None if p is None else p.update)
    for s, e in batches(len(exclude), rows or max(MIN_BATCH, min(16384, BATCH_BYTES // (64 * k)))):
        yield (s, e, *decode_keys(keys[exclude[s:e]]))


def decode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 distances, int64 indices) of neighbour keys (see `_NONE`)."""
    dist = (keys >> np.uint64(32)).astype(np.uint32).view(np.float32)
    return dist, (keys & np.uint64(0xFFFF_FFFF)).astype(np.int64)


def symmetric_self_knn(x: np.ndarray, k: int, block: int = SYMMETRIC_BLOCK,
                       on_block_row: Callable[[int], Any] | None = None) -> np.ndarray:
    """Each row's k nearest other rows, by symmetric blocks, as sorted neighbour keys (see `_NONE`).

    Distances are faiss' float32 formula, |x_i|^2 + |x_j|^2 - 2 x_i.x_j clamped at 0, with faiss' own norms and
    one BLAS product X_a X_b^T per pair of row blocks a <= b (the upper triangle of a diagonal block): every
    distance is computed once and serves both (i, j) and (j, i), so the order is (distance, index) on one
    symmetric matrix. Each block is merged into the lists of its rows and of its columns; a row's current k-th
    distance filters the candidates first, so merging stays far cheaper than the product. Memory: a block, its
    candidates and the (n, k) keys; the BLAS threads follow faiss' OpenMP setting.

    Args:
        x: (n, D) C-contiguous float32 rows.
        k: neighbours per row, 1 <= k <= n - 1.
        block: rows per block.
        on_block_row: called with the number of rows of each finished block row (progress).

    Returns:
        (n, k) uint64 keys, each row sorted: nearest first, ties by index.
    """
    import faiss
    from threadpoolctl import threadpool_limits

    n, dim = x.shape
    if n >= 1 << 32:
        raise OodmlError(f"the symmetric kNN indexes at most 2^32 - 1 rows, got {n}; use the faiss backend")
    norms = np.empty(n, dtype=np.float32)
    faiss.fvec_norms_L2sqr(faiss.swig_ptr(norms), faiss.swig_ptr(x), dim, n)  # type: ignore[attr-defined]
    lists = _Lists(n, k, norms)
    buf = np.empty(min(block, n) ** 2, dtype=np.float32)
    starts = range(0, n, block)
    with threadpool_limits(limits=faiss.omp_get_max_threads(), user_api="blas"):
        # the diagonal blocks first: every row then holds its k nearest within its own block, a tight filter early on
        for a0 in starts:
            lists.diagonal(x[a0:a0 + block], a0)
        for a0 in starts:
            a1 = min(a0 + block, n)
            for b0 in starts[starts.index(a0) + 1:]:
                b1 = min(b0 + block, n)
                ip = np.matmul(x[a0:a1], x[b0:b1].T, out=buf[: (a1 - a0) * (b1 - b0)].reshape(a1 - a0, b1 - b0))
                lists.merge_block(ip, a0, b0)
            if on_block_row is not None:
                on_block_row(a1 - a0)
    return np.sort(lists.keys, axis=1)


class _Lists:
    """The k best neighbour keys of every row so far (unordered) and each row's current k-th distance."""

    def __init__(self, n: int, k: int, norms: np.ndarray) -> None:
        self.k, self.norms = k, norms
        self.keys = np.full((n, k), _NONE, dtype=np.uint64)
        self.worst = np.full(n, np.inf, dtype=np.float32)  # inf while a row holds fewer than k neighbours
        spread = float(norms.max() - norms.min())
        #: filter candidates on the inner products (no distance matrix) when the norms are (nearly) equal
        self.by_ip = spread <= NORM_SPREAD * float(norms.max())

    def diagonal(self, x: np.ndarray, a0: int) -> None:
        """Merge the pairs within the rows `x` (starting at row a0), each pair once: small diagonal sub-blocks first
        (a cheap dense start for every row), then the strips right of them as off-diagonal blocks."""
        h = len(x)
        sub = max(DIAG_SUB, 4 * self.k)
        for s0 in range(0, h, sub):
            self._merge_diagonal(x[s0:s0 + sub] @ x[s0:s0 + sub].T, a0 + s0)
        for s0 in range(0, h - sub, sub):
            self.merge_block(x[s0:s0 + sub] @ x[s0 + sub:].T, a0 + s0, a0 + s0 + sub)

    def merge_block(self, ip: np.ndarray, a0: int, b0: int) -> None:
        """Merge the block of rows [a0, a0 + h) x columns [b0, b0 + w) (a0 + h <= b0) with inner products `ip`
        (h, w) into the lists of its rows and of its columns."""
        h, w = ip.shape
        na, nb = self.norms[a0:a0 + h], self.norms[b0:b0 + w]
        wa, wb = self.worst[a0:a0 + h], self.worst[b0:b0 + w]
        # screen the block by the rows' and columns' bounds (all of it while some row holds fewer than k
        # neighbours), then test each candidate's exact distance against its row's and its column's bound
        if self.by_ip:
            # d <= t implies ip >= (|a|^2 + |b|^2 - t) / 2 - slack (float32 rounding of d, ~1e-7 relative)
            lo_a = _ip_bound(na, float(nb.min()), float(nb.max()), wa)
            lo_b = _ip_bound(nb, float(na.min()), float(na.max()), wb)
            mask = ip >= min(lo_a.min(), lo_b.min())  # one pass with the loosest bound: enough when bounds are alike
            if np.count_nonzero(mask) > mask.size // LOOSE_SCREEN:
                mask = np.greater_equal(ip, lo_a[:, None], out=mask)
                mask |= ip >= lo_b
            r, c = _nonzero(mask)
            d = _distances(ip[r, c], na[r], nb[c])
        else:
            dist = _distances(ip, na, nb)
            mask = dist <= wa[:, None]
            mask |= dist <= wb
            r, c = _nonzero(mask)
            d = dist[r, c]
        keep = d <= wb[c]  # the column side first, before the row side lowers any bound
        order = np.argsort(c[keep], kind="stable")
        col_rows, col_d, col_other = b0 + c[keep][order], d[keep][order], a0 + r[keep][order]
        keep = d <= wa[r]
        self._merge(a0 + r[keep], d[keep], b0 + c[keep])
        self._merge(col_rows, col_d, col_other)

    def _merge_diagonal(self, ip: np.ndarray, a0: int) -> None:
        """Merge a small diagonal block (rows and columns [a0, a0 + h)): one symmetric matrix from its upper
        triangle, whose row side serves both sides."""
        h = len(ip)
        na, wa = self.norms[a0:a0 + h], self.worst[a0:a0 + h]
        dist = np.triu(_distances(ip, na, na), 1)
        dist += dist.T
        np.fill_diagonal(dist, np.inf)
        bound = wa
        if h - 1 > self.k and np.isinf(wa).all():  # nothing held yet: the block's own k-th distance bounds it
            bound = np.partition(dist, self.k - 1, axis=1)[:, self.k - 1]
        r, c = _nonzero(dist <= bound[:, None])
        self._merge(a0 + r, dist[r, c], a0 + c)

    def _merge(self, rows: np.ndarray, dist: np.ndarray, other: np.ndarray) -> None:
        """Merge candidates (`rows` grouped, ascending) at distances `dist` with neighbour indices `other`."""
        if not len(rows):
            return
        keys = (dist.view(np.uint32).astype(np.uint64) << np.uint64(32)) | other.astype(np.uint64)
        start = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        counts = np.diff(np.r_[start, len(rows)])
        targets = rows[start]
        k = self.k
        pad = np.full((len(targets), k + int(counts.max())), _NONE, dtype=np.uint64)
        pad[:, :k] = self.keys[targets]
        group = np.repeat(np.arange(len(targets)), counts)
        pad[group, k + np.arange(len(rows)) - start[group]] = keys
        best = np.partition(pad, k - 1, axis=1)[:, :k] if pad.shape[1] > k else pad
        self.keys[targets] = best
        worst = best.max(axis=1)
        self.worst[targets] = np.where(worst == _NONE, np.inf, decode_keys(worst)[0])


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.nonzero` of a C-contiguous 2-D mask, by the flat indices (several times faster on sparse masks)."""
    flat = np.flatnonzero(mask)
    return flat // mask.shape[1], flat % mask.shape[1]


def _distances(ip: np.ndarray, na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """faiss' float32 squared distances from inner products: (|a|^2 + |b|^2) - 2 ip, clamped at 0. `ip` is a
    (h, w) block with `na` (h,), `nb` (w,), or candidates with `na`, `nb` aligned to it."""
    if ip.ndim == 2:
        out = np.add.outer(na, nb)
    else:
        out = na + nb
    out -= ip + ip  # 2 * ip is exact
    return np.maximum(out, 0, out=out)


def _ip_bound(norms: np.ndarray, other_min: float, other_max: float, worst: np.ndarray) -> np.ndarray:
    """float32 lower bounds on the inner product of each row (`norms`) with a column whose distance can be <=
    `worst` (the row's k-th distance; inf: every column); conservative by 1e-6 relative."""
    nrm = norms.astype(np.float64)
    w = worst.astype(np.float64)
    with np.errstate(invalid="ignore"):
        lo = (nrm + other_min - w) / 2 - 1e-6 * (nrm + other_max + np.abs(w))
    return np.where(np.isinf(w), -np.inf, lo).astype(np.float32)
