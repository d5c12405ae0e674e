"""Pure retrieval metrics of the neighbour-label matrix (GUIDE §1.4).

`knn_labels[i, j]` is the label of query i's (j+1)-th nearest other item; `query_labels[i]` is query i's label.
Every function takes only these arrays (and R), so each can be checked against a table worked out by hand.
"""

from __future__ import annotations

import numpy as np

from oodml.errors import OodmlError


def matches(knn_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Boolean (n, K) matrix: True where the neighbour has the query's label."""
    knn_labels = np.asarray(knn_labels)
    query_labels = np.asarray(query_labels)
    if knn_labels.ndim != 2 or query_labels.shape != (knn_labels.shape[0],):
        raise OodmlError(f"knn_labels must be (n, K) and query_labels (n,), got {knn_labels.shape} and "
                         f"{query_labels.shape}")
    return knn_labels == query_labels[:, None]


def recall_at_k_per_query(knn_labels: np.ndarray, query_labels: np.ndarray, k: int) -> np.ndarray:
    """1.0 where at least one of the first k neighbours has the query's label, else 0.0 (all columns if K < k)."""
    if k < 1:
        raise OodmlError(f"recall@k needs k >= 1, got {k}")
    return np.any(matches(knn_labels, query_labels)[:, :k], axis=1).astype(np.float64)  # type: ignore[union-attr]


def recall_at_k(knn_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Recall@k: the fraction of queries with a same-class item among their k nearest other items."""
    return float(np.mean(recall_at_k_per_query(knn_labels, query_labels, k)))


def map_at_r_per_query(knn_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Average precision at R per query (Musgrave et al. 2020, "A Metric Learning Reality Check").

    For a query with R = `r[i]` relevant items, AP@R = (1/R) sum_{j=1..R} P(j) * rel(j), where rel(j) says whether
    the j-th neighbour is relevant and P(j) is the precision among the first j neighbours.

    Args:
        knn_labels: (n, K) neighbour labels, K >= max(r).
        query_labels: (n,) query labels.
        r: (n,) number of relevant items per query (other items of the query's class), each >= 1.
    """
    hit = matches(knn_labels, query_labels)
    r = np.asarray(r, dtype=np.int64)
    if r.shape != query_labels.shape or (len(r) and (r.min() < 1 or r.max() > hit.shape[1])):
        raise OodmlError(f"MAP@R needs 1 <= R <= K = {hit.shape[1]} neighbours per query; search more neighbours")
    hit = hit[:, : int(r.max(initial=1))]  # columns beyond the largest R never count: the value is independent of K
    ranks = np.arange(1, hit.shape[1] + 1)
    hit &= ranks[None, :] <= r[:, None]
    precision = np.cumsum(hit, axis=1) / ranks[None, :]
    # a sequential sum (cumsum's last column), so padding columns or batching never changes a value's rounding
    return np.cumsum(np.where(hit, precision, 0.0), axis=1)[:, -1] / r


def map_at_r(knn_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray) -> float:
    """MAP@R: the mean over queries of `map_at_r_per_query`."""
    return float(np.mean(map_at_r_per_query(knn_labels, query_labels, r)))
