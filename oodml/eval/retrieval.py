"""The runner's retrieval entry point: kNN over all items, each item a query against all others."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from oodml.errors import OodmlError
from oodml.eval.inputs import as_labels
from oodml.eval.knn import knn_batches
from oodml.eval.metrics import map_at_r_per_query, recall_at_k_per_query

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)


def needed_k(ks: Sequence[int], class_sizes: np.ndarray) -> int:
    """Neighbours the metrics need: the largest recall k, or the largest R (class size - 1) for MAP@R."""
    return int(max(max(ks, default=1), int(class_sizes.max()) - 1))


def retrieval_metrics(embeddings: Any, labels: Any, ks: Sequence[int] = DEFAULT_KS, *, backend: str = "faiss",
                      k: int | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Recall@k and MAP@R of every item retrieved against all other items, in bounded memory at any N and k.

    Queries whose class has no other item are left out of every metric and counted in `n_excluded`.

    Args:
        embeddings: (N, D) numpy array or torch tensor, any float dtype; Euclidean distances as given.
        labels: (N,) class labels (ints or strings).
        ks: the recall@k cut-offs.
        backend: kNN backend ("faiss" default, "torch" reference).
        k: neighbours to search; default (None) the `needed_k`; a larger k changes no value; capped at N - 1.
        batch_size: queries per search batch (default: bounded memory).

    Returns:
        {"recall@<k>": float for each k, "map@r": float, "n_queries": int, "n_excluded": int,
        "knn_backend": str, "knn_k": int}.
    """
    ks = _check_ks(ks)
    n = int(np.shape(embeddings)[0]) if np.ndim(embeddings) else 0
    codes, sizes = as_labels(labels, n)
    r = sizes[codes] - 1
    query_ids = np.flatnonzero(r > 0)
    if len(query_ids) == 0:
        raise OodmlError(f"no query has another item of its class among the {n} items; retrieval metrics need at "
                         "least one class with two or more items")
    need = needed_k(ks, sizes)
    if k is not None and k < need:
        raise OodmlError(f"k={k} is too small: recall@{max(ks)} and MAP@R (largest class has {int(sizes.max())} "
                         f"items) need k >= {need}; leave k unset to choose it automatically")
    knn_k = min(need if k is None else k, n - 1)
    ids = query_ids if len(query_ids) < n else None  # None: every row, no gather copy
    _, batches = knn_batches(embeddings, knn_k, query_ids=ids, backend=backend, batch_size=batch_size)
    query_labels, r_q = codes[query_ids], r[query_ids]
    per_query = np.empty((len(ks) + 1, len(query_ids)))  # recall@k rows, then AP@R; reduced batch by batch
    for s, e, _, idx in batches:
        knn_labels = codes[idx]
        for row, c in enumerate(ks):
            per_query[row, s:e] = recall_at_k_per_query(knn_labels, query_labels[s:e], c)
        per_query[-1, s:e] = map_at_r_per_query(knn_labels, query_labels[s:e], r_q[s:e])
    out: dict[str, Any] = {f"recall@{c}": float(np.mean(per_query[row])) for row, c in enumerate(ks)}
    out["map@r"] = float(np.mean(per_query[-1]))
    out.update(n_queries=int(len(query_ids)), n_excluded=int(n - len(query_ids)), knn_backend=backend, knn_k=knn_k)
    return out


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(c) for c in ks)
    if any(c < 1 for c in out) or len(set(out)) != len(out):
        raise OodmlError(f"recall cut-offs must be distinct integers >= 1, got {list(ks)}")
    return out
