"""The evaluation protocol over arrays: zero-shot retrieval on all test rows (k = 0) and k-shot episodes (k > 0).

Everything here works on feature-row indices and labels (no split objects, no files): `test_rows` are the level's
test rows, `supports[shots]` one array of support rows per episode, `labels` the class of every row. A method is
anything with `embed_variants(inputs) -> {variant: (n, D) array}`, `adapt(inputs, labels)` and `info`
(`zero_shot`, `uses_support`); `inputs(rows)` turns rows into what the method embeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from oodml.eval.metrics import FEW_SHOT, ZERO_SHOT, protocol_metrics
from oodml.eval.retrieval import RetrievalResult, retrieval_per_query
from oodml.seeding import derive_seed, rng, seed_everything

Inputs = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class MetricRow:
    """One metric of one embedding variant and shots value: the mean over episodes (k > 0) or over queries."""

    variant: str
    k: int
    metric: str | None  # None only on the row of a failed cell
    value: float | None
    episode_std: float | None = None
    n_episodes: int = 0
    n_queries: int | None = None
    knn_k: int | None = None
    knn_backend: str | None = None
    status: str = "ok"


@dataclass(frozen=True)
class EpisodeValue:
    """One metric of one k-shot episode."""

    variant: str
    k: int
    episode: int
    metric: str
    value: float


@dataclass(frozen=True)
class ClassValue:
    """One retrieval metric of one test class at k = 0: the mean of the class's per-query values."""

    variant: str
    k: int
    class_name: str
    metric: str
    value: float
    n_queries: int

    def to_dict(self) -> dict[str, Any]:
        """The cell file's entry: `{"variant", "k", "class", "metric", "value", "n_queries"}`."""
        return {"variant": self.variant, "k": self.k, "class": self.class_name, "metric": self.metric,
                "value": self.value, "n_queries": self.n_queries}


FewShotRows = tuple[list[MetricRow], list[EpisodeValue]]


def zero_shot_metrics() -> list[str]:
    """Names of the zero-shot metrics (the `METRICS` registry's, in its order)."""
    return [m.info.name for m in protocol_metrics(ZERO_SHOT)]


@dataclass(frozen=True)
class EvalData:
    """What the protocol evaluates on: every row's label, the test rows, the support rows of each episode, and the
    class names the labels index (per-class values are stored under these names).

    `max_queries` caps a k-shot episode's queries: an episode with more keeps a random draw of that many (in
    test-row order), the draw derived from `query_key`, k and the episode number only, so every method and seed of
    a level is scored on the same queries (paired comparisons stay paired). None keeps them all (docs/formats.md).
    """

    labels: np.ndarray
    test_rows: np.ndarray
    supports: Mapping[int, Sequence[np.ndarray]]
    class_names: np.ndarray | Sequence[str] | None = None
    max_queries: int | None = None
    query_key: str = ""

    def class_name(self, label: Any) -> str:
        """The name of class `label`."""
        return str(self.class_names[int(label)]) if self.class_names is not None else str(label)


@dataclass(frozen=True)
class EvalSeeds:
    """Keys the protocol's random streams derive from: set metrics such as NMI's k-means (per variant), and each
    episode's adaptation."""

    metric_key: str
    adapt_key: str


def contiguous(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..C-1 (in sorted label order) for methods that train classifiers or proxies."""
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def evaluate(method: Any, inputs: Inputs, data: EvalData, shots: Sequence[int], seeds: EvalSeeds,
             ) -> tuple[list[MetricRow], list[EpisodeValue], list[ClassValue]]:
    """Rows (one per variant x shots x metric), episode rows (k > 0) and class rows (k = 0) of a fitted `method`
    for every `shots` value."""
    metrics: list[MetricRow] = []
    episodes: list[EpisodeValue] = []
    classes: list[ClassValue] = []
    # a method that doesn't adapt embeds the test images alike in every episode: embed once, search once
    few = [k for k in shots if k > 0]
    shared_ks = ([k for k in few if shared_search_pays_off(data, k)]
                 if few and not method.info.uses_support and supports_in_test(data, few) else [])
    embs = method.embed_variants(inputs(data.test_rows)) if shared_ks else None
    zero_ok = 0 in shots and method.info.zero_shot
    zero, shared = shared_search(embs, data, shared_ks, zero_ok) if embs is not None else ({}, {})
    shared.update(few_shot(method, inputs, data, seeds, [k for k in few if k not in shared]))
    for k in shots:
        if k == 0 and not method.info.zero_shot:
            metrics += [MetricRow("", 0, m, None, status="skipped") for m in zero_shot_metrics()]
        elif k == 0:
            m, c = zero_shot(method, inputs, data, seeds, embs, zero)
            metrics += m
            classes += c
        else:
            m, e = shared[k]
            metrics += m
            episodes += e
    return metrics, episodes, classes


def finite(value: Any, what: str) -> float:
    """`value` as a float; ValueError naming `what` when it is NaN or infinite."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} is {v}; the embeddings contain NaN or inf")
    return v


def zero_shot(method: Any, inputs: Inputs, data: EvalData, seeds: EvalSeeds,
              embs: dict[str, np.ndarray] | None = None,
              retrieval: dict[str, RetrievalResult] | None = None) -> tuple[list[MetricRow], list[ClassValue]]:
    """k = 0 rows and class rows (each retrieval metric per test class: the mean of that class's per-query values,
    with its query count); `embs`: the test rows' embedding variants, `retrieval`: their per-query retrieval values,
    when already computed (`shared_search`)."""
    labels = data.labels[data.test_rows]
    chosen = protocol_metrics(ZERO_SHOT)
    on_queries = [m for m in chosen if m.info.kind == "retrieval"]
    out: list[MetricRow] = []
    classes: list[ClassValue] = []
    for variant, emb in (method.embed_variants(inputs(data.test_rows)) if embs is None else embs).items():
        res = retrieval[variant] if retrieval else retrieval_per_query(emb, labels, metrics=on_queries)
        r = res.summary()
        for m in chosen:
            name, what = m.info.name, f"{m.info.name} ({variant or 'base'}, k=0)"
            if m.info.kind == "retrieval":
                out.append(MetricRow(variant, 0, name, finite(r[name], what), n_queries=int(r["n_queries"]),
                                      knn_k=r.get("knn_k"), knn_backend=r.get("knn_backend")))
            else:
                value = m.factory(emb, labels, derive_seed(name, seeds.metric_key, variant) % 2**32)
                out.append(MetricRow(variant, 0, name, finite(value, what), n_queries=len(labels)))
        for label, n, values in res.per_class(labels[res.query_ids]):
            cls = data.class_name(label)
            classes += [ClassValue(variant, 0, cls, name, finite(v, f"{name} ({variant or 'base'}, k=0, class {cls})"),
                                   n) for name, v in values.items()]
    return out, classes


def few_shot(method: Any, inputs: Inputs, data: EvalData, seeds: EvalSeeds,
             shots: Sequence[int]) -> dict[int, FewShotRows]:
    """The k-shot rows and episode rows of every k in `shots`, one search per episode; the episodes of all of them
    adapt in one `adapt_episodes` call (one batched computation where the method supports it)."""
    chosen = protocol_metrics(FEW_SHOT)
    on_queries = [m for m in chosen if m.info.kind == "retrieval"]
    plan = [(k, e, support) for k in shots for e, support in enumerate(data.supports[k])]
    adapt_seeds = [derive_seed("adapt", seeds.adapt_key, k, e) for k, e, _ in plan]
    models = (method.adapt_episodes([(inputs(s), contiguous(data.labels[s])) for _, _, s in plan], adapt_seeds)
              if method.info.uses_support else iter([method] * len(plan)))
    accs = {k: KShot(k) for k in shots}
    n_queries: dict[int, list[int]] = {k: [] for k in shots}
    for (k, e, support), model, seed in zip(plan, models, adapt_seeds, strict=True):
        s_lab = data.labels[support]
        queries = data.test_rows[episode_queries(data, k, e, support)]
        q_lab = data.labels[queries]
        n_queries[k].append(len(queries))
        seed_everything(seed)
        both = model.embed_variants(inputs(np.concatenate([support, queries])))
        for variant, emb in both.items():
            s_emb, q_emb = emb[: len(support)], emb[len(support):]
            r = retrieval_per_query(q_emb, q_lab, metrics=on_queries).summary()
            accs[k].add(variant, e, episode_metrics(r, s_emb, s_lab, q_emb, q_lab))
    return {k: accs[k].result(n_queries[k]) for k in shots}


def episode_metrics(r: dict[str, Any], s_emb: np.ndarray, s_lab: np.ndarray, q_emb: np.ndarray,
                    q_lab: np.ndarray) -> dict[str, Any]:
    """An episode's retrieval summary `r` plus its classification metrics (support vs. queries)."""
    out = dict(r)
    for m in protocol_metrics(FEW_SHOT, "classification"):
        out[m.info.name] = m.factory(s_emb, s_lab, q_emb, q_lab)
    return out


class KShot:
    """Collects one k's per-episode metrics (episode rows) and aggregates them (mean, std over episodes)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: dict[tuple[str, str], list[float]] = {}
        self.extra: dict[tuple[str, str], dict[str, Any]] = {}
        self.episodes: list[EpisodeValue] = []
        self.metrics = protocol_metrics(FEW_SHOT)

    def add(self, variant: str, episode: int, r: dict[str, Any]) -> None:
        """Record one episode's metrics `r` (`episode_metrics`) of one variant."""
        for entry in self.metrics:
            m = entry.info.name
            v = finite(r[m], f"{m} ({variant or 'base'}, k={self.k}, episode {episode})")
            self.values.setdefault((variant, m), []).append(v)
            self.episodes.append(EpisodeValue(variant, self.k, episode, m, v))
            if entry.info.kind == "retrieval":
                self.extra[(variant, m)] = {"knn_k": r.get("knn_k"), "knn_backend": r.get("knn_backend")}

    def result(self, n_queries: list[int]) -> FewShotRows:
        """(one row per variant and metric, the episode rows); `n_queries`: each episode's query count."""
        rows = []
        for (variant, m), vals in self.values.items():
            arr = np.asarray(vals, dtype=np.float64)
            rows.append(MetricRow(variant, self.k, m, float(arr.mean()), episode_std=float(arr.std()),
                                  n_episodes=len(vals), n_queries=int(round(float(np.mean(n_queries)))),
                                  **self.extra.get((variant, m), {})))
        return rows, self.episodes


def query_mask(data: EvalData, support: np.ndarray) -> np.ndarray:
    """Over the test rows: True for an episode's candidate queries, i.e. its classes' test rows less its support."""
    return np.isin(data.labels[data.test_rows], np.unique(data.labels[support])) & ~np.isin(data.test_rows, support)


def episode_queries(data: EvalData, k: int, episode: int, support: np.ndarray) -> np.ndarray:
    """Over the test rows: True for the queries of `k`-shot episode `episode`: its candidate queries (`query_mask`),
    or a random `data.max_queries` of them when there are more (the draw depends on `data.query_key`, k and the
    episode only: the same for every method and seed)."""
    mask = query_mask(data, support)
    cap = data.max_queries
    if cap is None or int(mask.sum()) <= cap:
        return mask
    pos = np.flatnonzero(mask)
    keep = np.sort(rng("queries", data.query_key, k, episode).choice(len(pos), size=cap, replace=False))
    out = np.zeros_like(mask)
    out[pos[keep]] = True
    return out


def supports_in_test(data: EvalData, shots: Sequence[int]) -> bool:
    """True when every support row of these shots' episodes is a test row (as split files make them)."""
    return all(np.isin(s, data.test_rows).all() for k in shots for s in data.supports[k])


#: the shared search must look past every row outside an episode's queries, and each episode then scans all of
#: those neighbour lists; beyond this share of the test rows per-episode searches are cheaper. Measured on
#: Omniglot (13,180 test images, 10 episodes per k): 10-shot episodes hold half the test rows as support, and a
#: shared search 6,600 deep made a plain method's cell ~50 s instead of ~15 s; CUB-sized 10-shot episodes (17%
#: outside) are 3x cheaper shared (benchmarks/grid.py --shared-vs-episodes).
SHARED_SEARCH_MAX_OUTSIDE = 0.2


def shared_search_pays_off(data: EvalData, k: int) -> bool:
    """True when no `k`-shot episode leaves more than `SHARED_SEARCH_MAX_OUTSIDE` of the test rows out of its
    queries (its support, and for n-way episodes the other classes)."""
    n = len(data.test_rows)
    for e, support in enumerate(data.supports[k]):
        outside = n - int(episode_queries(data, k, e, support).sum())
        if outside > SHARED_SEARCH_MAX_OUTSIDE * n:
            return False
    return True


def shared_search(embs: dict[str, np.ndarray], data: EvalData, shots: Sequence[int], zero: bool,
                  ) -> tuple[dict[str, RetrievalResult], dict[int, FewShotRows]]:
    """The k-shot episodes of `shots` for a method that doesn't adapt, from one embedding of the test rows and one
    kNN search per variant, deep enough for every episode (`SubsetRetrieval.depth`); rows and episodes as
    `few_shot` makes them. With `zero`, the same search also gives the zero-shot retrieval values (variant ->
    `RetrievalResult`).

    An episode's queries keep their test-row order, so dropping the non-queries from the shared neighbour lists
    gives the (distance, index) order of a search over the queries alone, up to faiss's float32 rounding, which
    depends on the database layout: neighbours within ~1e-5 relative distance may swap (CUB-sized benchmark:
    episode values differ by at most 3e-6; benchmarks/grid.py --shared-vs-episodes).
    """
    from oodml.eval import knn_batches
    from oodml.eval.subsets import SubsetRetrieval

    few = [m for m in protocol_metrics(FEW_SHOT) if m.info.kind == "retrieval"]
    zero_metrics = [m for m in protocol_metrics(ZERO_SHOT) if m.info.kind == "retrieval"]
    test_labels = data.labels[data.test_rows]
    plan: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (shots, episode, support positions, query mask)
    for k in shots:
        for e, support in enumerate(data.supports[k]):
            s_pos = np.searchsorted(data.test_rows, support)
            plan.append((k, e, s_pos, episode_queries(data, k, e, support)))
    results: dict[tuple[str, int, int], dict[str, Any]] = {}
    zero_shot_r: dict[str, RetrievalResult] = {}
    for variant, emb in embs.items():
        everything = ([SubsetRetrieval(test_labels, np.ones(len(test_labels), dtype=bool), metrics=zero_metrics)]
                      if zero else [])
        accs = [SubsetRetrieval(test_labels, mask, metrics=few) for _, _, _, mask in plan]
        if accs or everything:
            depth = max(a.depth for a in accs + everything)
            for s, e, _, idx in knn_batches(emb, depth, backend="faiss")[1]:
                for a in accs + everything:
                    a.update(s, e, idx)
        if everything:
            zero_shot_r[variant] = everything[0].per_query()
        for (k, ep, s_pos, mask), a in zip(plan, accs, strict=True):
            results[(variant, k, ep)] = episode_metrics(a.result(), emb[s_pos], test_labels[s_pos], emb[mask],
                                                        test_labels[mask])
    out: dict[int, FewShotRows] = {}
    for k in shots:
        acc = KShot(k)
        for ep in range(len(data.supports[k])):
            for variant in embs:
                acc.add(variant, ep, results[(variant, k, ep)])
        out[k] = acc.result([int(mask.sum()) for kk, _, _, mask in plan if kk == k])
    return zero_shot_r, out
