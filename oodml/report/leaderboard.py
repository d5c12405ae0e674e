"""Aggregate stored rows into tables: per-level statistics, leaderboards, few-shot gain, error reduction (SPEC §4).

Everything here is a pandas group-by or pivot over the tidy rows; nothing computes a metric. Values are first
averaged per seed (a seed's row already aggregates its episodes), then over seeds per level, then over levels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats as sps

from oodml.errors import OodmlError, suggest
from oodml.progress import log
from oodml.schema import METRICS

#: Default leaderboard metric per k: the first of these that the results hold at that k.
DEFAULT_METRIC_ORDER: tuple[str, ...] = ("recall@1", "accuracy")
#: Families whose methods adapt a source-trained embedding on the support set (Scott et al.'s hybrids).
ADAPTED_FAMILIES: tuple[str, ...] = ("adapted",)
#: Columns every leaderboard starts with (SPEC §4); `L<level>` columns follow, then `n_errors`, `n_levels`,
#: `n_L<level>`.
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
            else the first stored metric in `oodml.schema.METRICS` order.

    Returns:
        k -> metric; with an explicit metric, the ks that lack it are left out (and logged).

    Raises:
        OodmlError: the explicit metric is unknown, or stored at no k.
    """
    present = {int(k): set(g.unique()) for k, g in ok.groupby("k_shot")["metric"]}
    if metric is not None:
        everywhere = set().union(*present.values()) if present else set()
        if metric not in METRICS and metric not in everywhere:
            raise OodmlError(f"unknown metric {metric!r}{suggest(metric, METRICS)}; choose one of {', '.join(METRICS)}")
        if metric not in everywhere:
            raise OodmlError(f"metric {metric!r} is not in the results (stored: {', '.join(sorted(everywhere))}); "
                             "pass one of those to --metric")
        missing = [k for k in ks if metric not in present.get(k, set())]
        if missing:
            log(f"report: no {metric} values at k={','.join(map(str, missing))}; no leaderboard for those k")
        return {k: metric for k in ks if k not in missing}
    out: dict[int, str] = {}
    for k in ks:
        have = present.get(k, set())
        order = [m for m in (*DEFAULT_METRIC_ORDER, *METRICS) if m in have] + sorted(have - set(METRICS))
        out[k] = order[0] if order else DEFAULT_METRIC_ORDER[0]
    return out


def levels_table(rows: pd.DataFrame) -> pd.DataFrame:
    """`level, fid, n_train_classes, n_test_classes, split_hash`: one row per split level in the rows."""
    cols = ["split_level", "split_fid", "n_train_classes", "n_test_classes", "split_hash"]
    known = rows[cols].dropna(subset=["split_fid"])
    table = known.groupby("split_level", sort=True).first()
    table = table.reindex(sorted(rows["split_level"].unique())).reset_index()
    multi = known.groupby("split_level")["split_hash"].nunique()
    if (multi > 1).any():
        log(f"report: level(s) {', '.join(map(str, multi.index[multi > 1]))} hold rows from more than one split "
            "(different split_hash); they are averaged together: use one results folder per split file")
    return table.rename(columns={"split_level": "level", "split_fid": "fid"})


def seed_values(ok: pd.DataFrame) -> pd.DataFrame:
    """One value per (metric, k, method, level, seed): the mean of that seed's rows (normally exactly one)."""
    keys = [*_STAT_KEY, "seed"]
    grouped = ok.groupby(keys, sort=True)
    out = grouped["value"].mean().to_frame("value")
    out["method_family"] = grouped["method_family"].first()
    return out.reset_index()


def level_stats(seeds: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, n and 95% t-interval over seeds per (metric, k, method, level)."""
    grouped = seeds.groupby(_STAT_KEY, sort=True)
    out = grouped["value"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    out["method_family"] = grouped["method_family"].first()
    n = out["n"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(n > 1, sps.t.ppf(0.975, np.maximum(n - 1, 1)) * out["std"].to_numpy() / np.sqrt(n), np.nan)
    out["ci_lo"] = out["mean"] - half
    out["ci_hi"] = out["mean"] + half
    return out.reset_index()


def error_counts(grid: pd.DataFrame) -> pd.DataFrame:
    """Failed (cell, k) pairs per (k, method, level), from a dataset's `grid_entries`."""
    err = grid[grid["status"] == "error"]
    out = err.groupby(["k_shot", "method", "split_level"])["cell_id"].nunique().rename("n_errors")
    return out.reset_index()


def area_under_curve(fids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Trapezoid area of each row of `values` over `fids` divided by the FID range (NaN cells are left out).

    A row with one finite value has that value as its area; a row with none has NaN.
    """
    order = np.argsort(fids)
    x, y = np.asarray(fids, float)[order], np.atleast_2d(np.asarray(values, float))[:, order]
    out = np.full(y.shape[0], np.nan)
    full = ~np.isnan(y).any(axis=1)
    if full.any() and len(x) > 1 and x[-1] > x[0]:
        out[full] = np.trapezoid(y[full], x, axis=1) / (x[-1] - x[0])
    elif full.any() and len(x) == 1:
        out[full] = y[full, 0]
    for i in np.flatnonzero(~full):  # rows with missing levels: few
        keep = ~np.isnan(y[i])
        if keep.sum() == 1:
            out[i] = y[i, keep][0]
        elif keep.sum() > 1 and x[keep][-1] > x[keep][0]:
            out[i] = np.trapezoid(y[i, keep], x[keep]) / (x[keep][-1] - x[keep][0])
    return out


def leaderboard(stats: pd.DataFrame, seeds: pd.DataFrame, levels: pd.DataFrame, errors: pd.DataFrame, *, k: int,
                metric: str, methods: Mapping[str, str]) -> pd.DataFrame:
    """The SPEC §4 leaderboard of one k: `rank, method, family, metric, mean, auc, n_seeds, L..`, then `n_errors`,
    `n_levels` (levels with a value: `mean` and `auc` cover only those) and `n_L..` (seeds per level).

    Args:
        stats: `level_stats` of one dataset.
        seeds: its `seed_values` (for `n_seeds`, the distinct seeds with a value at any level).
        levels: its `levels_table`.
        errors: its `error_counts`.
        k: the shot count.
        metric: the metric to rank by.
        methods: method -> family of every method with a cell at this k (methods with only error cells included).

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
    return board


def few_shot_gain(stats: pd.DataFrame, levels: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per method, k > 0 and level: mean metric at k minus mean at k = 0 (both over seeds).

    Returns columns `method, method_family, k_shot, split_level, fid, metric, mean_k, mean_0, gain`; empty when
    the metric is not stored at k = 0 and some k > 0.
    """
    sub = stats[stats["metric"] == metric]
    zero = sub[sub["k_shot"] == 0][["method", "split_level", "mean"]].rename(columns={"mean": "mean_0"})
    shots = sub[sub["k_shot"] > 0][["method", "method_family", "k_shot", "split_level", "mean"]]
    out = shots.rename(columns={"mean": "mean_k"}).merge(zero, on=["method", "split_level"], how="inner")
    out["gain"] = out["mean_k"] - out["mean_0"]
    out["metric"] = metric
    out = out.merge(levels[["level", "fid"]].rename(columns={"level": "split_level"}), on="split_level")
    cols = ["method", "method_family", "k_shot", "split_level", "fid", "metric", "mean_k", "mean_0", "gain"]
    return out[cols].sort_values(["k_shot", "method", "split_level"]).reset_index(drop=True)


def error_reduction(stats: pd.DataFrame, levels: pd.DataFrame, metric_by_k: Mapping[int, str]) -> pd.DataFrame:
    """Scott et al.'s table: relative reduction of error (1 - metric) of each adapted method vs the best other one.

    For every k and level: `(err_best - err) / err_best`, where `err_best` is the error of the non-adapted method
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
    out = sub[adapted][["k_shot", "split_level", "metric", "method", "method_family", "mean"]]
    out = out.merge(best, on=["k_shot", "split_level"], how="inner")
    ref_err = 1.0 - out["reference_mean"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["error_reduction"] = np.where(ref_err > 0, (ref_err - (1.0 - out["mean"].to_numpy(float))) / ref_err,
                                          np.nan)
    out = out.merge(levels[["level", "fid"]].rename(columns={"level": "split_level"}), on="split_level")
    cols = ["k_shot", "split_level", "fid", "metric", "method", "method_family", "mean", "reference_method",
            "reference_mean", "error_reduction"]
    return out[cols].sort_values(["k_shot", "method", "split_level"]).reset_index(drop=True)
