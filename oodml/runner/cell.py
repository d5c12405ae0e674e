"""Run one cell: fit the method on the level's source classes once (or load the fit from the cache), then evaluate
zero-shot retrieval on all test images (k = 0) and k-shot episodes (k > 0).

This is what a worker process or a Ray task executes; it writes nothing but the fit cache and returns a
`CellResult` (numbers, no provenance) that the parent turns into the cell file.
"""

from __future__ import annotations

import math
import os
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oodml.config import canonical_json
from oodml.runner.grid import Cell, LevelData
from oodml.seeding import derive_seed, seed_everything

ZERO_SHOT_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi")
FEW_SHOT_METRICS = ("accuracy", "recall@1", "recall@2", "recall@4", "recall@8", "map@r")
RETRIEVAL_KS = (1, 2, 4, 8)


@dataclass
class CellTask:
    """Everything a worker needs to run one cell besides the features (sent once per worker)."""

    cell: Cell
    level: LevelData
    overrides: dict[str, Any]
    plugins: tuple[str, ...] = ()
    device: str = "cpu"
    threads: int = 1
    fit_cache: str | None = None
    refit: bool = False
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CellResult:
    """Aggregated metrics (one dict per variant x k x metric), per-episode values, status and resources."""

    cell_id: str
    status: str
    error: str | None = None
    traceback: str | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    peak_mem_mb: float | None = None
    fit_cached: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # e.g. the adaptation settings per k


def execute(task: CellTask, features: Any) -> CellResult:
    """Run one cell on `features` (a FeatureSet); an exception becomes a result with status `error`."""
    t0, c0 = time.perf_counter(), time.process_time()
    _reset_peak_rss()
    try:
        metrics, episodes, cached, training = _evaluate(task, features)
        statuses = {m["status"] for m in metrics}
        status = "skipped" if statuses == {"skipped"} else "ok"
        result = CellResult(task.cell.cell_id, status, metrics=metrics, episodes=episodes, fit_cached=cached,
                            training=training)
    except Exception as e:  # one failing cell must not stop the grid (GUIDE §1.11)
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        result = CellResult(task.cell.cell_id, "error", error=msg, traceback=traceback.format_exc())
    result.wall_time_s = round(time.perf_counter() - t0, 3)
    result.cpu_time_s = round(time.process_time() - c0, 3)
    result.peak_mem_mb = _peak_rss_mb()
    return result


def warm_up(plugins: tuple[str, ...] = ()) -> None:
    """Import what cells use (methods, plugins, the metrics' lazy imports: faiss, sklearn, PML) so that the first
    cell's wall time is its own."""
    from oodml import eval as ev
    from oodml import methods as api

    api.load_plugins(plugins)
    seed_everything(0)  # its first call imports torch._inductor (seconds)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = np.repeat(np.arange(4), 2)
    ev.retrieval_metrics(x, y, RETRIEVAL_KS)
    ev.nmi(x, y, seed=0)
    ev.prototype_accuracy(x[::2], y[::2], x[1::2], y[1::2])
    try:
        import pytorch_metric_learning.losses  # noqa: F401
    except ImportError:  # pragma: no cover - a declared dependency
        pass


def set_threads(n: int) -> None:
    """Limit torch (and faiss) to `n` threads in this process, so parallel workers don't oversubscribe cores."""
    import torch

    torch.set_num_threads(max(1, n))
    try:
        import faiss

        faiss.omp_set_num_threads(max(1, n))
    except ImportError:  # pragma: no cover - faiss is a declared dependency
        pass


def _contiguous(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..C-1 (in sorted label order) for methods that train classifiers or proxies."""
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def _evaluate(task: CellTask, fs: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool, dict[str, Any]]:
    from oodml import methods as api
    from oodml.methods.base import MethodContext

    api.load_plugins(task.plugins)
    cell, lv = task.cell, task.level
    dataset = None
    if cell.regime == "full":
        from oodml.data import load_dataset

        dataset = load_dataset(cell.dataset, task.data_root, **task.dataset_options)

    def inputs(rows: np.ndarray) -> Any:
        return api.make_inputs(cell.regime, features=fs, rows=rows, dataset=dataset, backbone=cell.backbone)

    fit_seed = derive_seed("fit", canonical_json(cell.seed_key()))
    ctx = MethodContext(regime=cell.regime, in_dim=int(fs.features.shape[1]), backbone=cell.backbone,
                        dataset=cell.dataset, device=task.device, seed=fit_seed % 2**32)
    seed_everything(fit_seed)
    method = api.build_method(cell.method, ctx, task.overrides)
    train_rows, val = lv.train_rows, None
    if getattr(method, "selects_on_val", False) and len(lv.val_rows):  # hold the validation classes out
        train_rows = lv.train_rows[~np.isin(lv.train_rows, lv.val_rows)]
        val = (inputs(lv.val_rows), fs.labels[lv.val_rows])
    cached = _fit(method, inputs(train_rows), _contiguous(fs.labels[train_rows]), task, val)
    metrics: list[dict[str, Any]] = []
    episodes: list[dict[str, Any]] = []
    # a method that doesn't adapt embeds the test images alike in every episode: embed once, search once
    few_ks = [k for k in cell.ks if k > 0]
    shared_ks = ([k for k in few_ks if _shared_search_pays_off(fs, lv, k)]
                 if few_ks and not method.info.uses_support and _supports_in_test(lv, few_ks) else [])
    embs = method.embed_variants(inputs(lv.test_rows)) if shared_ks else None
    zero_ok = 0 in cell.ks and method.info.zero_shot
    zero, few = _shared_search(embs, fs, lv, shared_ks, zero_ok) if embs is not None else ({}, {})
    few.update(_few_shot(method, inputs, fs, lv, cell, [k for k in few_ks if k not in few]))
    for k in cell.ks:
        if k == 0 and not method.info.zero_shot:
            metrics += [_row("", 0, m, None, status="skipped") for m in ZERO_SHOT_METRICS]
        elif k == 0:
            metrics += _zero_shot(method, inputs, fs, lv, cell, embs, zero)
        else:
            metrics += few[k][0]
            episodes += few[k][1]
    adaptation = {str(k): r for k in few_ks if (r := method.adaptation_record(k))}
    training = {"fit": method.fit_record()} if method.fit_record() else {}
    return metrics, episodes, cached, ({**training, "adaptation": adaptation} if adaptation else training)


def _fit(method: Any, x: Any, y: np.ndarray, task: CellTask, val: tuple[Any, np.ndarray] | None = None) -> bool:
    """Fit, or restore the fitted source state from the cache; returns True when the cache was used."""
    import torch

    path = Path(task.fit_cache) / f"{task.cell.cell_id}.pt" if task.fit_cache else None
    if path is not None and path.is_file() and not task.refit:
        try:
            # our own cache file (may hold numpy arrays besides tensors), written below by this function
            state = torch.load(path, map_location=task.device, weights_only=False)
        except Exception:  # a truncated or stale cache entry: fit again and overwrite it
            state = None
        if state is not None:
            method.load_state_dict(state)
            return True
    if val is None:
        method.fit(x, y)
    else:
        method.fit(x, y, val=val)
    if path is not None:
        state = method.state_dict()
        if state:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)
    return False


def _row(variant: str, k: int, metric: str, value: float | None, *, std: float | None = None, n_episodes: int = 0,
         n_queries: int | None = None, knn_k: int | None = None, knn_backend: str | None = None,
         status: str = "ok") -> dict[str, Any]:
    return {"variant": variant, "k": k, "metric": metric, "value": value, "episode_std": std,
            "n_episodes": n_episodes, "n_queries": n_queries, "knn_k": knn_k, "knn_backend": knn_backend,
            "status": status}


def _finite(value: Any, what: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} is {v}; the embeddings contain NaN or inf")
    return v


def _zero_shot(method: Any, inputs: Callable[[np.ndarray], Any], fs: Any, lv: LevelData, cell: Cell,
               embs: dict[str, np.ndarray] | None = None,
               retrieval: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """k = 0 rows; `embs`: the test rows' embedding variants, `retrieval`: their retrieval metrics, when already
    computed (`_shared_search`)."""
    from oodml.eval import nmi, retrieval_metrics

    labels = fs.labels[lv.test_rows]
    out: list[dict[str, Any]] = []
    for variant, emb in (method.embed_variants(inputs(lv.test_rows)) if embs is None else embs).items():
        r = retrieval[variant] if retrieval else retrieval_metrics(emb, labels, RETRIEVAL_KS)
        for m in ZERO_SHOT_METRICS[:-1]:
            out.append(_row(variant, 0, m, _finite(r[m], f"{m} ({variant or 'base'}, k=0)"),
                            n_queries=int(r["n_queries"]), knn_k=r.get("knn_k"), knn_backend=r.get("knn_backend")))
        value = nmi(emb, labels, seed=derive_seed("nmi", canonical_json(cell.seed_key()), variant) % 2**32)
        out.append(_row(variant, 0, "nmi", _finite(value, f"nmi ({variant or 'base'}, k=0)"),
                        n_queries=len(labels)))
    return out


def _few_shot(method: Any, inputs: Callable[[np.ndarray], Any], fs: Any, lv: LevelData, cell: Cell,
              ks: list[int]) -> dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """The k-shot rows and episode rows of every k in `ks`; the episodes of all of them adapt in one
    `adapt_episodes` call (one batched computation where the method supports it)."""
    from oodml.eval import prototype_accuracy, retrieval_metrics

    plan = [(k, e, support) for k in ks for e, support in enumerate(lv.supports[k])]
    seeds = [derive_seed("adapt", cell.cell_id, k, e) for k, e, _ in plan]
    models = (method.adapt_episodes([(inputs(s), _contiguous(fs.labels[s])) for _, _, s in plan], seeds)
              if method.info.uses_support else iter([method] * len(plan)))
    accs = {k: _KShot(k) for k in ks}
    n_queries: dict[int, list[int]] = {k: [] for k in ks}
    for (k, e, support), model, seed in zip(plan, models, seeds, strict=True):
        s_lab = fs.labels[support]
        queries = lv.test_rows[_query_mask(fs, lv, support)]
        q_lab = fs.labels[queries]
        n_queries[k].append(len(queries))
        seed_everything(seed)
        both = model.embed_variants(inputs(np.concatenate([support, queries])))
        for variant, emb in both.items():
            s_emb, q_emb = emb[: len(support)], emb[len(support):]
            r = dict(retrieval_metrics(q_emb, q_lab, RETRIEVAL_KS))
            r["accuracy"] = prototype_accuracy(s_emb, s_lab, q_emb, q_lab)
            accs[k].add(variant, e, r)
    return {k: accs[k].result(n_queries[k]) for k in ks}


class _KShot:
    """Collects one k's per-episode metrics (episode rows) and aggregates them (mean, std over episodes)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: dict[tuple[str, str], list[float]] = {}
        self.extra: dict[tuple[str, str], dict[str, Any]] = {}
        self.episodes: list[dict[str, Any]] = []

    def add(self, variant: str, episode: int, r: dict[str, Any]) -> None:
        """Record one episode's metrics `r` (retrieval metrics plus `accuracy`) of one variant."""
        for m in FEW_SHOT_METRICS:
            v = _finite(r[m], f"{m} ({variant or 'base'}, k={self.k}, episode {episode})")
            self.values.setdefault((variant, m), []).append(v)
            self.episodes.append({"variant": variant, "k": self.k, "episode": episode, "metric": m, "value": v})
            if m != "accuracy":
                self.extra[(variant, m)] = {"knn_k": r.get("knn_k"), "knn_backend": r.get("knn_backend")}

    def result(self, n_queries: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(one row per variant and metric, the episode rows); `n_queries`: each episode's query count."""
        rows = []
        for (variant, m), vals in self.values.items():
            arr = np.asarray(vals, dtype=np.float64)
            rows.append(_row(variant, self.k, m, float(arr.mean()), std=float(arr.std()), n_episodes=len(vals),
                             n_queries=int(round(float(np.mean(n_queries)))), **self.extra.get((variant, m), {})))
        return rows, self.episodes


def _query_mask(fs: Any, lv: LevelData, support: np.ndarray) -> np.ndarray:
    """Over the level's test rows: True for an episode's queries, i.e. its classes' test images less its support."""
    return np.isin(fs.labels[lv.test_rows], np.unique(fs.labels[support])) & ~np.isin(lv.test_rows, support)


def _supports_in_test(lv: LevelData, ks: list[int]) -> bool:
    """True when every support row of these k's episodes is a test row (as split files make them)."""
    return all(np.isin(s, lv.test_rows).all() for k in ks for s in lv.supports[k])


#: the shared search must look past every row outside an episode's queries, and each episode then scans all of
#: those neighbour lists; beyond this share of the test rows per-episode searches are cheaper. Measured on
#: Omniglot (13,180 test images, 10 episodes per k): 10-shot episodes hold half the test rows as support, and a
#: shared search 6,600 deep made a plain method's cell ~50 s instead of ~15 s; CUB-sized 10-shot episodes (17%
#: outside) are 3x cheaper shared (benchmarks/grid.py --shared-vs-episodes).
SHARED_SEARCH_MAX_OUTSIDE = 0.2


def _shared_search_pays_off(fs: Any, lv: LevelData, k: int) -> bool:
    """True when no `k`-shot episode leaves more than `SHARED_SEARCH_MAX_OUTSIDE` of the test rows out of its
    queries (its support, and for n-way episodes the other classes)."""
    n = len(lv.test_rows)
    for support in lv.supports[k]:
        outside = n - int(_query_mask(fs, lv, support).sum())
        if outside > SHARED_SEARCH_MAX_OUTSIDE * n:
            return False
    return True


def _shared_search(embs: dict[str, np.ndarray], fs: Any, lv: LevelData, ks: list[int], zero: bool,
                   ) -> tuple[dict[str, dict[str, Any]], dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]]]]]:
    """The k-shot episodes of `ks` for a method that doesn't adapt, from one embedding of the test rows and one kNN
    search per variant, deep enough for every episode (`SubsetRetrieval.depth`); rows and episodes as `_few_shot`
    makes them.
    With `zero`, the same search also gives the zero-shot retrieval metrics (variant -> `retrieval_metrics` dict).

    An episode's queries keep their test-row order, so dropping the non-queries from the shared neighbour lists
    gives the (distance, index) order of a search over the queries alone, up to faiss's float32 rounding, which
    depends on the database layout: neighbours within ~1e-5 relative distance may swap (CUB-sized benchmark:
    episode values differ by at most 3e-6; benchmarks/grid.py --shared-vs-episodes).
    """
    from oodml.eval import knn_batches, prototype_accuracy
    from oodml.eval.subsets import SubsetRetrieval

    test_labels = fs.labels[lv.test_rows]
    plan: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (k, episode, support positions, query mask)
    for k in ks:
        for e, support in enumerate(lv.supports[k]):
            s_pos = np.searchsorted(lv.test_rows, support)
            plan.append((k, e, s_pos, _query_mask(fs, lv, support)))
    results: dict[tuple[str, int, int], dict[str, Any]] = {}
    zero_shot: dict[str, dict[str, Any]] = {}
    for variant, emb in embs.items():
        everything = [SubsetRetrieval(test_labels, np.ones(len(test_labels), dtype=bool), RETRIEVAL_KS)] if zero else []
        accs = [SubsetRetrieval(test_labels, mask, RETRIEVAL_KS) for _, _, _, mask in plan]
        if accs or everything:
            depth = max(a.depth for a in accs + everything)
            for s, e, _, idx in knn_batches(emb, depth, backend="faiss")[1]:
                for a in accs + everything:
                    a.update(s, e, idx)
        if everything:
            zero_shot[variant] = everything[0].result()
        for (k, ep, s_pos, mask), a in zip(plan, accs, strict=True):
            r = a.result()
            r["accuracy"] = prototype_accuracy(emb[s_pos], test_labels[s_pos], emb[mask], test_labels[mask])
            results[(variant, k, ep)] = r
    out: dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for k in ks:
        acc = _KShot(k)
        for ep in range(len(lv.supports[k])):
            for variant in embs:
                acc.add(variant, ep, results[(variant, k, ep)])
        out[k] = acc.result([int(mask.sum()) for kk, _, _, mask in plan if kk == k])
    return zero_shot, out


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter for this process (Linux); elsewhere the lifetime peak is reported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    """Peak resident memory since `_reset_peak_rss` (VmHWM), else the process's lifetime peak, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (OSError, ValueError):  # pragma: no cover
        return None
