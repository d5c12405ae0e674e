"""Retrieval metrics of item subsets from one shared self-retrieval search over all items.

A k-shot episode evaluates its queries (a subset of the test items) retrieved among themselves. When the embeddings
do not depend on the episode, one search over all N items with enough neighbours (`SubsetRetrieval.depth`) holds
every episode's neighbour lists: dropping the non-members from a member's list, in order, leaves its nearest
members, ordered by (distance, index) as a search over the subset alone would order them. The metrics then come from
the pure functions of `oodml.eval.metrics`, with the same queries, R, k and rounding as `retrieval_metrics`.

Distances of a search over all items may differ from a search over the subset by float32 rounding (the BLAS kernel
depends on the database layout), so two neighbours closer than about 1e-6 may come out in the other order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from oodml.errors import OodmlError
from oodml.eval.inputs import as_labels, to_numpy
from oodml.eval.metrics import MetricInfo, per_query_values
from oodml.eval.retrieval import DEFAULT_KS, RetrievalResult, metrics_for, neighbours_needed
from oodml.registry import Entry


def first_members(indices: np.ndarray, member: np.ndarray, k: int) -> np.ndarray:
    """The first `k` neighbours of each row that are members of the subset, in list order.

    Args:
        indices: (n, K) neighbour lists (item indices, nearest first).
        member: (N,) bool, True for the subset's items.
        k: members to keep per row.

    Returns:
        (n, k) int64 item indices.
    """
    keep = member[indices]
    count = np.cumsum(keep, axis=1, dtype=np.int32)
    short = count[:, -1] < k if count.shape[1] else np.ones(len(indices), dtype=bool)
    if short.any():
        raise OodmlError(f"{int(short.sum())} neighbour lists hold fewer than {k} subset members; search "
                         "more neighbours (SubsetRetrieval.depth)")
    return indices[keep & (count <= k)].reshape(len(indices), k)


class SubsetRetrieval:
    """Recall@k and MAP@R of the members of a subset, each retrieved against the other members, accumulated batch
    by batch from a self-retrieval search over all N items (e.g. `oodml.eval.knn_batches`, query_ids unset).

    The values, `n_queries`, `n_excluded` and `knn_k` equal `retrieval_metrics(embeddings[member],
    labels[member], ks)` up to the rounding of near-equal distances (module docstring).
    """

    def __init__(self, labels: Any, member: Any, ks: Sequence[int] = DEFAULT_KS, *, backend: str = "faiss",
                 metrics: Sequence[Entry[MetricInfo]] | None = None) -> None:
        """Set up the subset.

        Args:
            labels: (N,) labels of all items (ints or strings).
            member: (N,) bool mask of the subset, or its item indices.
            ks: the recall@k cut-offs.
            backend: the kNN backend of the search, recorded as `knn_backend`.
            metrics: the retrieval metrics (`METRICS` entries) to compute instead of recall@ks and MAP@R.
        """
        self.metrics = metrics_for(ks, metrics)
        lab = to_numpy(labels)
        n = len(lab)
        m = to_numpy(member)
        if m.dtype != np.bool_:
            mask = np.zeros(n, dtype=bool)
            mask[m.astype(np.int64).ravel()] = True
            m = mask
        if m.shape != (n,):
            raise OodmlError(f"member must be a bool mask over the {n} items or item indices, got shape {m.shape}")
        self.n, self.member, self.backend = n, m, backend
        rows = np.flatnonzero(m)
        codes, sizes = as_labels(lab[rows], len(rows))
        r = sizes[codes] - 1
        if not (r > 0).any():
            raise OodmlError(f"no query has another item of its class among the {len(rows)} items; retrieval "
                             "metrics need at least one class with two or more items")
        self.code = np.full(n, -1, dtype=np.int64)
        self.code[rows] = codes
        self.r = np.zeros(n, dtype=np.int64)
        self.r[rows] = r
        self.is_query = np.zeros(n, dtype=bool)
        self.is_query[rows[r > 0]] = True
        self.n_members = len(rows)
        self.n_queries = int((r > 0).sum())
        self.knn_k = min(neighbours_needed(self.metrics, sizes), self.n_members - 1)
        #: neighbours per item the shared search needs: knn_k members after skipping every non-member
        self.depth = min(n - 1, self.knn_k + n - self.n_members)
        self._per_query = np.empty((len(self.metrics), self.n_queries))
        self._next = 0
        self._filled = 0

    def update(self, start: int, end: int, indices: np.ndarray) -> None:
        """Consume the neighbour lists of items [start, end) (self excluded), batches in item order.

        Args:
            start: first item of the batch.
            end: one past its last item.
            indices: (end - start, K) neighbour indices ordered by (distance, index), K >= `depth`.
        """
        if start != self._next or indices.shape[0] != end - start:
            raise OodmlError(f"batches must cover the items in order: expected rows from {self._next}, got "
                             f"[{start}, {end}) with {indices.shape[0]} lists")
        if indices.shape[1] < self.depth:
            raise OodmlError(f"{indices.shape[1]} neighbours per item are too few for this subset; search "
                             f"k >= {self.depth} (SubsetRetrieval.depth)")
        self._next = end
        sel = self.is_query[start:end]
        if not sel.any():
            return
        nb = first_members(indices[sel, : self.depth], self.member, self.knn_k)
        q = self.code[start:end][sel]
        s, e = self._filled, self._filled + len(q)
        self._per_query[:, s:e] = per_query_values(self.code[nb], q, self.r[start:end][sel], self.metrics)
        self._filled = e

    def result(self) -> dict[str, Any]:
        """The metrics, with the keys of `retrieval_metrics`; every item must have been consumed."""
        return self.per_query().summary()

    def per_query(self) -> RetrievalResult:
        """The per-query values; `query_ids` are positions among the subset's members (as in a search over the
        subset alone). Every item must have been consumed."""
        if self._next != self.n:
            raise OodmlError(f"only {self._next} of {self.n} items' neighbour lists were consumed")
        members = np.flatnonzero(self.member)
        query_ids = np.flatnonzero(self.is_query[members])
        return RetrievalResult(names=tuple(m.info.name for m in self.metrics), values=self._per_query,
                               query_ids=query_ids, n_excluded=self.n_members - self.n_queries,
                               knn_k=self.knn_k, knn_backend=self.backend)


def subset_retrieval_metrics(indices: np.ndarray, labels: Any, member: Any, ks: Sequence[int] = DEFAULT_KS, *,
                             backend: str = "faiss") -> dict[str, Any]:
    """`SubsetRetrieval` on a complete (N, K) self-retrieval neighbour matrix, K >= its `depth`."""
    acc = SubsetRetrieval(labels, member, ks, backend=backend)
    acc.update(0, len(indices), np.asarray(indices))
    return acc.result()
