"""The runner's retrieval entry point: kNN over all items, each item a query against all others."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from oodml.errors import OodmlError
from oodml.eval.inputs import as_labels
from oodml.eval.knn import knn_batches
from oodml.eval.metrics import METRICS, MetricInfo, per_query_values, recall_metric
from oodml.registry import Entry

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)


def needed_k(ks: Sequence[int], class_sizes: np.ndarray) -> int:
    """Neighbours the metrics need: the largest recall k, or the largest R (class size - 1) for MAP@R."""
    return int(max(max(ks, default=1), int(class_sizes.max()) - 1))


def metrics_for(ks: Sequence[int], metrics: Sequence[Entry[MetricInfo]] | None = None) -> list[Entry[MetricInfo]]:
    """The retrieval metrics to compute: `metrics` when given, else recall@k for each of `ks`, then MAP@R."""
    if metrics is not None:
        return list(metrics)
    return [recall_metric(c) for c in _check_ks(ks)] + [METRICS.get("map@r")]


def neighbours_needed(metrics: Sequence[Entry[MetricInfo]], class_sizes: np.ndarray) -> int:
    """Neighbours per query that every metric in `metrics` needs, given the class sizes."""
    max_r = int(class_sizes.max()) - 1
    return int(max([1, *((m.info.neighbours or (lambda _r: 1))(max_r) for m in metrics)]))


@dataclass(frozen=True)
class RetrievalResult:
    """Per-query values of retrieval metrics: `values[i, j]` is metric `names[i]` of query `query_ids[j]` (a
    position among the evaluated items)."""

    names: tuple[str, ...]
    values: np.ndarray
    query_ids: np.ndarray
    n_excluded: int
    knn_k: int
    knn_backend: str

    def summary(self) -> dict[str, Any]:
        """Each metric's mean over queries, with `n_queries`, `n_excluded`, `knn_backend`, `knn_k`."""
        out: dict[str, Any] = {name: float(np.mean(self.values[row])) for row, name in enumerate(self.names)}
        out.update(n_queries=int(len(self.query_ids)), n_excluded=self.n_excluded, knn_backend=self.knn_backend,
                   knn_k=self.knn_k)
        return out

    def per_class(self, query_labels: np.ndarray) -> list[tuple[Any, int, dict[str, float]]]:
        """(label, n_queries, {metric: mean of that label's per-query values}) for every label among the queries,
        in sorted label order; `query_labels` are the queries' labels, aligned with `query_ids`."""
        labels = np.asarray(query_labels)
        out = []
        for label in np.unique(labels):
            sel = labels == label
            out.append((label, int(sel.sum()),
                        {name: float(np.mean(self.values[row, sel])) for row, name in enumerate(self.names)}))
        return out


def retrieval_metrics(embeddings: Any, labels: Any, ks: Sequence[int] = DEFAULT_KS, *, backend: str = "faiss",
                      k: int | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Recall@k and MAP@R of every item retrieved against all other items: `retrieval_per_query(...).summary()`;
    the arguments are those of `retrieval_per_query`."""
    return retrieval_per_query(embeddings, labels, ks, backend=backend, k=k, batch_size=batch_size).summary()


def retrieval_per_query(embeddings: Any, labels: Any, ks: Sequence[int] = DEFAULT_KS, *, backend: str = "faiss",
                        k: int | None = None, batch_size: int | None = None,
                        metrics: Sequence[Entry[MetricInfo]] | None = None) -> RetrievalResult:
    """Recall@k and MAP@R of every item retrieved against all other items, in bounded memory at any N and k.

    Queries whose class has no other item are left out of every metric and counted in `n_excluded`.

    Args:
        embeddings: (N, D) numpy array or torch tensor, any float dtype; Euclidean distances as given.
        labels: (N,) class labels (ints or strings).
        ks: the recall@k cut-offs.
        backend: kNN backend ("faiss" default, "torch" reference).
        k: neighbours to search; default (None) the `needed_k`; a larger k changes no value; capped at N - 1.
        batch_size: queries per search batch (default: bounded memory).
        metrics: the retrieval metrics (`METRICS` entries) to compute instead of recall@ks and MAP@R.
    """
    chosen = metrics_for(ks, metrics)
    n = int(np.shape(embeddings)[0]) if np.ndim(embeddings) else 0
    codes, sizes = as_labels(labels, n)
    r = sizes[codes] - 1
    query_ids = np.flatnonzero(r > 0)
    if len(query_ids) == 0:
        raise OodmlError(f"no query has another item of its class among the {n} items; retrieval metrics need at "
                         "least one class with two or more items")
    need = neighbours_needed(chosen, sizes)
    if k is not None and k < need:
        raise OodmlError(f"k={k} is too small: {', '.join(m.info.name for m in chosen)} (largest class has "
                         f"{int(sizes.max())} items) need k >= {need}; leave k unset to choose it automatically")
    knn_k = min(need if k is None else k, n - 1)
    ids = query_ids if len(query_ids) < n else None  # None: every row, no gather copy
    _, batches = knn_batches(embeddings, knn_k, query_ids=ids, backend=backend, batch_size=batch_size)
    query_labels, r_q = codes[query_ids], r[query_ids]
    per_query = np.empty((len(chosen), len(query_ids)))  # one row per metric; reduced batch by batch
    for s, e, _, idx in batches:
        per_query[:, s:e] = per_query_values(codes[idx], query_labels[s:e], r_q[s:e], chosen)
    return RetrievalResult(names=tuple(m.info.name for m in chosen), values=per_query, query_ids=query_ids,
                           n_excluded=int(n - len(query_ids)), knn_k=knn_k, knn_backend=backend)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(c) for c in ks)
    if any(c < 1 for c in out) or len(set(out)) != len(out):
        raise OodmlError(f"recall cut-offs must be distinct integers >= 1, got {list(ks)}")
    return out
