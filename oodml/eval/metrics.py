"""The metrics: pure per-query functions of the neighbour-label matrix (hand-computed tests in tests/eval) and the METRICS registry.

`knn_labels[i, j]` is the label of query i's (j+1)-th nearest other item; `query_labels[i]` is query i's label.
Every function takes only these arrays (and R), so each can be checked against a table worked out by hand.

Each metric is defined once, as a `METRICS` entry: its name, its kind (what its function takes), the protocols it
applies to and how unit values reduce to the metric. The evaluation protocol (`oodml.eval.protocol`) reads the
registry in registration order, so registering a `retrieval` metric here (or in a plugin) is all it takes to have
it in every zero-/k-shot cell, per class in zero-shot cells, and in the report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from oodml.errors import OodmlError
from oodml.registry import Entry, Registry


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


def map_at_k_per_query(knn_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray, *, k: int) -> np.ndarray:
    """ooDML's mAP@k per query (their `mAP_1000` at k = 1000, Milbich et al. 2021's selection score).

    AP@k = (1/(R+1)) sum_{j=1..k} P(j) * rel(j) over the first k neighbours (all of them if fewer), where R + 1 is
    the size of the query's class, the query included: ooDML divides by the class count although the query itself
    is never among its neighbours, so a perfect ranking scores R / (R + 1).

    Args:
        knn_labels: (n, K) neighbour labels.
        query_labels: (n,) query labels.
        r: (n,) number of other items of each query's class.
        k: neighbours read.
    """
    if k < 1:
        raise OodmlError(f"mAP@k needs k >= 1, got {k}")
    hit = matches(knn_labels, query_labels)[:, :k]
    ranks = np.arange(1, hit.shape[1] + 1)
    precision = np.cumsum(hit, axis=1) / ranks[None, :]
    return np.where(hit, precision, 0.0).sum(axis=1) / (np.asarray(r, dtype=np.float64) + 1)


# --- the registry ------------------------------------------------------------------------------------------------

ZERO_SHOT = "zero_shot"
FEW_SHOT = "few_shot"


@dataclass(frozen=True)
class MetricInfo:
    """One metric.

    `kind` says what its function (the registry factory) computes:
    - `retrieval`: `fn(knn_labels, query_labels, r) -> (n,) float64`, one value per query (the unit), reduced by the
      mean; `neighbours(max_r)` is how many neighbours a query needs when the largest class has `max_r` + 1 items;
    - `clustering`: `fn(embeddings, labels, seed) -> float` over the whole evaluated set (e.g. NMI);
    - `classification`: `fn(support, support_labels, queries, query_labels) -> float` per k-shot episode.
    """

    name: str
    description: str
    kind: str
    protocols: tuple[str, ...]
    neighbours: Callable[[int], int] | None = None
    reduction: str = "mean"


METRICS: Registry[MetricInfo] = Registry("metric")  # type: ignore[type-var]  # frozen vs HasName


def _nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int) -> float:
    from oodml.eval.clustering import nmi

    return nmi(embeddings, labels, seed=seed)


def _accuracy(support: np.ndarray, support_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray) -> float:
    from oodml.eval.fewshot import prototype_accuracy

    return prototype_accuracy(support, support_labels, queries, query_labels)


def _first(k: int) -> Callable[[int], int]:
    """`neighbours` of a metric that reads the first `k` neighbours."""

    def need(max_r: int) -> int:
        return k

    return need


def _all_relevant(max_r: int) -> int:
    """`neighbours` of a metric that reads the first R neighbours of every query."""
    return max_r


def recall_metric(k: int) -> Entry[MetricInfo]:
    """The `recall@k` entry: the registered one, or an unregistered one for another cut-off."""
    name = f"recall@{k}"
    if name in METRICS:
        return METRICS.get(name)
    return Entry(MetricInfo(name, f"recall at {k}", "retrieval", (ZERO_SHOT, FEW_SHOT), _first(k)),
                 functools.partial(_recall_fn, k=k))


def map_at_k_metric(k: int) -> Entry[MetricInfo]:
    """An unregistered `map@<k>` entry (ooDML's mAP@k, `map_at_k_per_query`): read by `select_metric`, not
    reported in cells."""
    return Entry(MetricInfo(f"map@{k}", f"ooDML's mean average precision over the first {k} neighbours", "retrieval",
                            (ZERO_SHOT, FEW_SHOT), _first(k)), functools.partial(map_at_k_per_query, k=k))


def _recall_fn(knn_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray, *, k: int) -> np.ndarray:
    return recall_at_k_per_query(knn_labels, query_labels, k)


# registration order is the order of a cell's rows: accuracy first in k-shot cells, NMI last in zero-shot ones
METRICS.add(MetricInfo("accuracy", "k-shot n-way nearest-prototype classification accuracy of the queries",
                       "classification", (FEW_SHOT,)), _accuracy)
for _k in (1, 2, 4, 8):
    METRICS.add(MetricInfo(f"recall@{_k}", f"fraction of queries with a same-class item among their {_k} nearest",
                           "retrieval", (ZERO_SHOT, FEW_SHOT), _first(_k)),
                functools.partial(_recall_fn, k=_k))
METRICS.add(MetricInfo("map@r", "mean average precision at R (Musgrave et al. 2020)", "retrieval",
                       (ZERO_SHOT, FEW_SHOT), _all_relevant), map_at_r_per_query)
METRICS.add(MetricInfo("nmi", "normalised mutual information of a k-means clustering, one cluster per class",
                       "clustering", (ZERO_SHOT,)), _nmi)


def protocol_metrics(protocol: str, kind: str | None = None) -> list[Entry[MetricInfo]]:
    """The registered metrics of `protocol` (`zero_shot`, `few_shot`), of one `kind` if given, in registration
    order."""
    return [e for e in METRICS.entries() if protocol in e.info.protocols and (kind is None or e.info.kind == kind)]


def per_query_values(knn_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray,
                     metrics: Sequence[Entry[MetricInfo]]) -> np.ndarray:
    """(len(metrics), n) float64: each retrieval metric's value per query; the one per-query reduction that full
    and subset retrieval share."""
    out = np.empty((len(metrics), len(query_labels)))
    for row, m in enumerate(metrics):
        out[row] = m.factory(knn_labels, query_labels, r)
    return out
