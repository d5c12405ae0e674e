"""Aggregate stored rows into tables: per-level statistics, leaderboards, few-shot gain, error reduction (docs/formats.md).

Everything here is a pandas group-by or pivot over the tidy rows; nothing computes a metric. Values are first
averaged per seed (a seed's row already aggregates its episodes), then over seeds per level, then over levels.
Intervals and p-values are seed-level: the seed is the replication unit (`oodml.report.intervals`,
`oodml.report.stats`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from oodml.errors import OodmlError, suggest
from oodml.progress import log
from oodml.report import intervals as iv, stats as st
from oodml.report.series import check_one_split
from oodml.report.stats import ALPHA, area_under_curve

#: Default leaderboard metric per k: the first of these that the results hold at that k.
DEFAULT_METRIC_ORDER: tuple[str, ...] = ("recall@1", "accuracy")
#: Families whose methods adapt a source-trained embedding on the support set (Scott et al.'s hybrids).
ADAPTED_FAMILIES: tuple[str, ...] = ("adapted",)
#: Unadapted counterparts whose name is not the adapted method's name without `adapted_`.
UNADAPTED: dict[str, str] = {"adapted_proto": "protonet", "adapted_hist": "histogram"}
_STAT_KEY = ["metric", "k_shot", "method", "split_level"]


def ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with `status == "ok"` (the only ones ever averaged)."""
    return rows[rows["status"] == "ok"]


def choose_metrics(ok: pd.DataFrame, ks: list[int], metric: str | None) -> dict[int, str]:
    """The leaderboard metric for each k.

    Args:
        ok: ok rows of one dataset.
        ks: every k the dataset's cells have.
        metric: the user's choice (`--metric`), or None for the default: recall@1 where present, else accuracy,
            else the first metric stored at that k (the cells store them in `oodml.eval.metrics.METRICS` order).

    Returns:
        k -> metric; with an explicit metric, the ks that lack it are left out (and logged).

    Raises:
        OodmlError: the explicit metric is unknown, or stored at no k.
    """
    stored = [str(m) for m in dict.fromkeys(ok["metric"])]  # the metrics stored, in the order the cells wrote them
    present = {int(k): set(g.unique()) for k, g in ok.groupby("k_shot")["metric"]}
    if metric is not None:
        if metric not in stored:
            raise OodmlError(f"unknown metric {metric!r}{suggest(metric, stored)}: not in the results, which hold "
                             f"{', '.join(stored)}; pass one of those to --metric")
        missing = [k for k in ks if metric not in present.get(k, set())]
        if missing:
            log(f"report: no {metric} values at k={','.join(map(str, missing))}; no leaderboard for those k")
        return {k: metric for k in ks if k not in missing}
    out: dict[int, str] = {}
    for k in ks:
        have = present.get(k, set())
        order = [m for m in (*DEFAULT_METRIC_ORDER, *stored) if m in have]
        out[k] = order[0] if order else DEFAULT_METRIC_ORDER[0]
    return out


def levels_table(rows: pd.DataFrame, dataset: str = "") -> pd.DataFrame:
    """`level, fid, n_train_classes, n_test_classes, split_hash`: one row per split level in the rows.

    Raises:
        OodmlError: a level holds rows of two split files (`series.check_one_split`).
    """
    cols = ["split_level", "split_fid", "n_train_classes", "n_test_classes", "split_hash"]
    known = rows[cols].dropna(subset=["split_fid"])
    table = known.groupby("split_level", sort=True).first()
    table = table.reindex(sorted(rows["split_level"].unique())).reset_index()
    check_one_split(rows, dataset)
    return table.rename(columns={"split_level": "level", "split_fid": "fid"})


def seed_values(ok: pd.DataFrame) -> pd.DataFrame:
    """One value per (metric, k, method, level, seed): the mean of that seed's rows (normally exactly one)."""
    keys = [*_STAT_KEY, "seed"]
    grouped = ok.groupby(keys, sort=True)
    out = grouped["value"].mean().to_frame("value")
    out["method_family"] = grouped["method_family"].first()
    return out.reset_index()


def level_stats(seeds: pd.DataFrame, level_ci: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean, std and n over seeds per (metric, k, method, level), with `ci_low`, `ci_high` from `level_ci`
    (columns metric, k_shot, method, split_level, ci_low, ci_high: the seed-level intervals; NaN elsewhere)."""
    grouped = seeds.groupby(_STAT_KEY, sort=True)
    out = grouped["value"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    out["method_family"] = grouped["method_family"].first()
    out = out.reset_index()
    if level_ci is None or level_ci.empty:
        return out.assign(ci_low=np.nan, ci_high=np.nan)
    ci = level_ci.astype({"k_shot": np.int64, "split_level": np.int64})
    out = out.astype({"method": str, "metric": str}).merge(ci, on=_STAT_KEY, how="left")
    return out


def error_counts(grid: pd.DataFrame) -> pd.DataFrame:
    """Failed (cell, k) pairs per (k, method, level), from a dataset's `grid_entries`."""
    err = grid[grid["status"] == "error"]
    out = err.groupby(["k_shot", "method", "split_level"])["cell_id"].nunique().rename("n_errors")
    return out.reset_index()


def leaderboard(stats: pd.DataFrame, seeds: pd.DataFrame, levels: pd.DataFrame, errors: pd.DataFrame, *, k: int,
                metric: str, methods: Mapping[str, str], frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """The leaderboard (docs/results.md) of one k: `rank, method, family, metric, mean, ci_low, ci_high, auc, auc_ci_low,
    auc_ci_high, n_seeds, interval_note, vs_best_p, vs_best_p_holm, tied_with_best`, `L..`, `L.._ci_low`,
    `L.._ci_high`, then `n_errors`, `n_levels` (levels with a value: `mean` and `auc` cover only those) and `n_L..`
    (seeds per level).

    `ci_low`/`ci_high` are 95% seed-level t intervals of the mean over levels (the seeds are the replication unit,
    `oodml.report.stats.contrast`), `auc_ci_*` of the auc, `L.._ci_*` of each level; `interval_note` says when a
    value rests on one seed (no interval) or two; `vs_best_p` is the paired t test over seeds of the method's mean
    over levels against the rank-1 method, `vs_best_p_holm` its Holm adjustment over the methods, and
    `tied_with_best` is True for rank 1 and for every method whose adjusted p is at least 0.05 (not distinguishable
    from rank 1).

    Args:
        stats: `level_stats` of one dataset.
        seeds: its `seed_values` (for `n_seeds`, the distinct seeds with a value at any level).
        levels: its `levels_table`.
        errors: its `error_counts`.
        k: the shot count.
        metric: the metric to rank by.
        methods: method -> family of every method with a cell at this k (methods with only error cells included).
        frame: `intervals.unit_frame` of this k and metric (None: no intervals or p-values).

    Returns:
        One row per method, best mean first; equal means share a rank; methods without values rank last, unranked.
    """
    sub = stats[(stats["k_shot"] == k) & (stats["metric"] == metric)]
    level_ids = [int(v) for v in levels["level"]]
    names = sorted(methods)
    means = sub.pivot(index="method", columns="split_level", values="mean").reindex(index=names, columns=level_ids)
    counts = sub.pivot(index="method", columns="split_level", values="n").reindex(index=names, columns=level_ids)
    board = pd.DataFrame({"method": names, "family": [methods[m] for m in names], "metric": metric})
    board["mean"] = means.mean(axis=1, skipna=True).to_numpy()
    board["auc"] = area_under_curve(levels["fid"].to_numpy(float), means.to_numpy(float))
    seed_ids = seeds[(seeds["k_shot"] == k) & (seeds["metric"] == metric)].groupby("method")["seed"].nunique()
    board["n_seeds"] = board["method"].map(seed_ids).fillna(0).astype(int)
    for lv in level_ids:
        board[f"L{lv}"] = means[lv].to_numpy()
    errs = errors[errors["k_shot"] == k].groupby("method")["n_errors"].sum()
    board["n_errors"] = board["method"].map(errs).fillna(0).astype(int)
    board["n_levels"] = means.notna().sum(axis=1).to_numpy()
    for lv in level_ids:
        board[f"n_L{lv}"] = counts[lv].fillna(0).astype(int).to_numpy()
    board.insert(0, "rank", board["mean"].round(12).rank(method="min", ascending=False).astype("Int64"))
    board = board.sort_values(["rank", "method"], na_position="last", kind="stable").reset_index(drop=True)
    return _with_uncertainty(board, levels, level_ids, frame)


def _with_uncertainty(board: pd.DataFrame, levels: pd.DataFrame, level_ids: list[int],
                      frame: pd.DataFrame | None) -> pd.DataFrame:
    """Add the interval and significance columns to a sorted leaderboard (NaN where a value rests on one seed)."""
    names = board["method"].tolist()
    fids = {int(lv): float(f) for lv, f in zip(levels["level"], levels["fid"])}
    per_level, over = iv.level_intervals(frame, names, fids)
    over = over.set_index("method").reindex(names)
    ranked = board["rank"].notna().to_numpy()
    best = names[0] if len(names) and ranked[0] else None
    if best is not None and frame is not None:
        tests = iv.vs_best(frame, best, [m for m, r in zip(names, ranked) if r], fids).set_index("method")
    else:
        tests = pd.DataFrame(columns=["vs_best_p", "vs_best_p_holm"])
    p = tests["vs_best_p"].reindex(names).to_numpy(float)
    p_holm = tests["vs_best_p_holm"].reindex(names).to_numpy(float)
    tied = pd.array([True if m == best else (None if np.isnan(q) else bool(q >= ALPHA)) for m, q in zip(names, p_holm)],
                    dtype="boolean")
    head = {"ci_low": over["ci_low"].to_numpy(float), "ci_high": over["ci_high"].to_numpy(float)}
    after_auc = {"auc_ci_low": over["auc_ci_low"].to_numpy(float), "auc_ci_high": over["auc_ci_high"].to_numpy(float)}
    out = board.copy()
    at = out.columns.get_loc("mean") + 1
    for i, (col, vals) in enumerate(head.items()):
        out.insert(at + i, col, vals)
    at = out.columns.get_loc("auc") + 1
    for i, (col, vals) in enumerate(after_auc.items()):
        out.insert(at + i, col, vals)
    at = out.columns.get_loc("n_seeds") + 1
    notes = [st.seed_note(int(n)) if n < 3 else "" for n in out["n_seeds"]]
    for i, (col, vals) in enumerate({"interval_note": notes, "vs_best_p": p, "vs_best_p_holm": p_holm,
                                     "tied_with_best": tied}.items()):
        out.insert(at + i, col, vals)
    ci = per_level.set_index(["method", "split_level"]) if len(per_level) else None
    at = out.columns.get_loc(f"L{level_ids[-1]}") + 1 if level_ids else len(out.columns)
    extra = {}
    for lv in level_ids:
        for side in ("ci_low", "ci_high"):
            extra[f"L{lv}_{side}"] = ([float(ci[side].get((m, lv), np.nan)) for m in names] if ci is not None
                                      else np.full(len(names), np.nan))
    for i, (col, vals) in enumerate(extra.items()):
        out.insert(at + i, col, vals)
    return out


#: Columns of `few_shot_gain`.
GAIN_COLUMNS = ("method", "method_family", "unadapted", "k_shot", "split_level", "fid", "metric", "n_seeds", "n_units",
                "mean_adapted", "mean_unadapted", "gain", "ci_low", "ci_high", "p", "p_holm", "interval_note")


def unadapted_of(method: str, present: set[str]) -> str | None:
    """The unadapted counterpart of an adapted method among `present`: `UNADAPTED`, else the name without
    `adapted_` (`adapted_margin+sec[x]` -> `margin+sec[x]`); None when it did not run."""
    base, bracket, variant = method.partition("[")
    for name in (UNADAPTED.get(base), base.removeprefix("adapted_") if base.startswith("adapted_") else None):
        if name is not None and name + bracket + variant in present:
            return name + bracket + variant
    return None


def few_shot_gain(frames: Mapping[int, pd.DataFrame], families: Mapping[str, str], levels: pd.DataFrame,
                  metric: str) -> pd.DataFrame:
    """The few-shot gain of every adapted method: per k > 0 and level, the paired difference "adapted minus the same
    source model unadapted" on the same k-shot queries (same seeds and episodes), with its seed-level t interval, the
    paired t test over seeds and Holm's adjustment over the levels.

    Args:
        frames: k -> `intervals.unit_frame` of (k, metric), for every k > 0 that has the metric.
        families: method -> family (adapted methods: family in `ADAPTED_FAMILIES`).
        levels: `levels_table`.
        metric: the metric.

    Returns:
        `GAIN_COLUMNS`, one row per (k, adapted method, level); empty without adapted/unadapted pairs.
    """
    fids = {int(lv): float(f) for lv, f in zip(levels["level"], levels["fid"])}
    parts = []
    for k, frame in sorted(frames.items()):
        present = set(frame["method"].unique())
        pairs = {m: (m, u) for m in sorted(present)
                 if families.get(m) in ADAPTED_FAMILIES and (u := unadapted_of(m, present)) is not None}
        if not pairs:
            continue
        d = iv.paired_differences(frame, pairs, fids)
        d = d[d["split_level"].notna()]
        parts.append(pd.DataFrame({
            "method": d["method_a"], "method_family": d["method_a"].map(families), "unadapted": d["method_b"],
            "k_shot": k, "split_level": d["split_level"].astype(np.int64), "fid": d["fid"], "metric": metric,
            "n_seeds": d["n_seeds"], "n_units": d["n_units"], "mean_adapted": d["mean_a"],
            "mean_unadapted": d["mean_b"], "gain": d["diff"], "ci_low": d["ci_low"], "ci_high": d["ci_high"],
            "p": d["p"], "p_holm": d["p_holm"], "interval_note": d["note"]}))
    if not parts:
        return pd.DataFrame(columns=list(GAIN_COLUMNS))
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["k_shot", "method", "split_level"]).reset_index(drop=True)[list(GAIN_COLUMNS)]


def error_reduction(stats: pd.DataFrame, levels: pd.DataFrame, metric_by_k: Mapping[int, str]) -> pd.DataFrame:
    """Scott et al.'s table: relative reduction of error (1 - metric) of each adapted method vs the best other one.

    For every k > 0 and level (at k = 0 nothing is adapted): `(err_best - err) / err_best`, where `err_best` is the error of the non-adapted method
    with the highest mean there (family not in `ADAPTED_FAMILIES`). NaN where that error is 0.

    Returns columns `k_shot, split_level, fid, metric, method, method_family, mean, reference_method,
    reference_mean, error_reduction`.
    """
    parts = [stats[(stats["k_shot"] == k) & (stats["metric"] == m)] for k, m in sorted(metric_by_k.items())]
    sub = pd.concat(parts) if parts else stats.iloc[:0]
    adapted = sub["method_family"].isin(ADAPTED_FAMILIES)
    others = sub[~adapted & sub["mean"].notna()].sort_values(["k_shot", "split_level", "method"], kind="stable")
    best = others.loc[others.groupby(["k_shot", "split_level"])["mean"].idxmax()]
    best = best[["k_shot", "split_level", "method", "mean"]].rename(
        columns={"method": "reference_method", "mean": "reference_mean"})
    out = sub[adapted & (sub["k_shot"] > 0)][["k_shot", "split_level", "metric", "method", "method_family", "mean"]]
    out = out.merge(best, on=["k_shot", "split_level"], how="inner")
    ref_err = 1.0 - out["reference_mean"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["error_reduction"] = np.where(ref_err > 0, (ref_err - (1.0 - out["mean"].to_numpy(float))) / ref_err,
                                          np.nan)
    out = out.merge(levels[["level", "fid"]].rename(columns={"level": "split_level"}), on="split_level")
    cols = ["k_shot", "split_level", "fid", "metric", "method", "method_family", "mean", "reference_method",
            "reference_mean", "error_reduction"]
    return out[cols].sort_values(["k_shot", "method", "split_level"]).reset_index(drop=True)
