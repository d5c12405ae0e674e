"""Intervals and paired tests for the report's tables (issue 17), from the store's per-unit values.

`unit_frame` turns the stored units of one (k, metric) into the long table `oodml.report.stats` works on; a
(method, level, seed) whose cell file has no per-unit values (written before oodml stored them) enters as one
pseudo-unit, its aggregate: it keeps every mean exact, and every interval or p-value that would rest on it is left
empty and named in `Coverage.notes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from oodml.report import stats as st

#: Columns of `unit_frame`.
FRAME_COLUMNS = ("method", "split_level", "seed", "unit", "value", "weight", "pseudo")
#: Columns of `paired_differences`.
DIFF_COLUMNS = ("pair", "method_a", "method_b", "split_level", "fid", "n_seeds", "n_units", "mean_a", "mean_b",
                "diff", "ci_low", "ci_high", "p", "p_holm")
#: Unit codes of episodes start here (class codes below it, -1 for a pseudo-unit): the codes sort as the labels
#: `c:<class>` < `e:<episode>` do.
EPISODE_CODES = 1 << 32
NO_UNITS = ("cell files without per-unit values (written before oodml stored per-episode and per-class values; "
            "rerun those cells with `oodml run --force`)")
ONE_UNIT = ("the value rests on a single unit (one seed x one episode or class): a resample of it is itself, so a "
            "bootstrap interval would have zero width; more seeds or episodes (`make-splits --episodes`) give one")


@dataclass
class Coverage:
    """Which (k, method, level) have no interval, and why.

    Attributes:
        notes: one line per k and method whose levels (some or all) have no interval.
        uncovered_ks: the ks where no method has an interval at any level for want of per-unit values (named once
            in `lines`, not per method).
        single_unit_ks: the ks where every value rests on a single unit (likewise named once).
    """

    notes: list[str] = field(default_factory=list)
    uncovered_ks: list[int] = field(default_factory=list)
    single_unit_ks: list[int] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report's lines: one per reason for all wholly uncovered ks, then the per-method notes."""
        head = []
        for ks, why in ((self.uncovered_ks, NO_UNITS), (self.single_unit_ks, ONE_UNIT)):
            if ks:
                head.append(f"k = {', '.join(map(str, ks))}: no value has an interval (no method at any level; means "
                            f"only, and the curves draw no band), {why}")
        return head + self.notes


def unit_frame(units: pd.DataFrame, seeds: pd.DataFrame, *, k: int, metric: str) -> pd.DataFrame:
    """The per-unit values of one (k, metric) as `FRAME_COLUMNS`.

    Args:
        units: the store's unit table (`oodml.report.store.UNIT_COLUMNS`) of one dataset.
        seeds: the dataset's `seed_values` (one aggregate per metric, k, method, level, seed).
        k: the shot count.
        metric: the metric.

    Returns:
        One row per unit (`unit`: an integer code, see `unit_labels`; `weight`: the class's query count, 1 for an
        episode); aggregates without units add one `pseudo` row (unit code -1).
    """
    sub = _select(units, k, metric)
    is_class = sub["class"].notna().to_numpy()
    codes, _ = _unit_codes(sub)
    real = pd.DataFrame({
        "method": sub["method"].astype(str).to_numpy(), "split_level": sub["split_level"].to_numpy(np.int64),
        "seed": sub["seed"].to_numpy(np.int64), "unit": codes, "value": sub["value"].to_numpy(float),
        "weight": np.where(is_class, sub["n_queries"].to_numpy(float), 1.0), "pseudo": False,
    })
    agg = seeds[(seeds["k_shot"] == k) & (seeds["metric"] == metric)]
    agg = pd.DataFrame({"method": agg["method"].astype(str).to_numpy(),
                        "split_level": agg["split_level"].to_numpy(np.int64), "seed": agg["seed"].to_numpy(np.int64),
                        "unit": np.int64(-1), "value": agg["value"].to_numpy(float), "weight": 1.0, "pseudo": True})
    have = pd.MultiIndex.from_frame(real[["method", "split_level", "seed"]].drop_duplicates())
    lacking = ~pd.MultiIndex.from_frame(agg[["method", "split_level", "seed"]]).isin(have)
    return pd.concat([real, agg[lacking]], ignore_index=True)[list(FRAME_COLUMNS)]


def unit_labels(units: pd.DataFrame, *, k: int, metric: str) -> dict[int, str]:
    """The label of each unit code of `unit_frame(units, ..., k=k, metric=metric)`: `c:<class>`, `e:<episode>`,
    and `aggregate` for -1."""
    _, labels = _unit_codes(_select(units, k, metric))
    return {-1: "aggregate", **labels}


def unit_kind(codes: object) -> str:
    """`episodes`, `classes` or `units` (a mix, or only pseudo-units): what the unit codes of a frame count."""
    arr = np.asarray(codes, dtype=np.int64)
    real = arr[arr >= 0]
    if real.size and (real >= EPISODE_CODES).all():
        return "episodes"
    if real.size and (real < EPISODE_CODES).all():
        return "classes"
    return "units"


def _select(units: pd.DataFrame, k: int, metric: str) -> pd.DataFrame:
    return units[(units["k_shot"] == k) & (units["metric"] == metric)]


def _unit_codes(sub: pd.DataFrame) -> tuple[np.ndarray, dict[int, str]]:
    """Integer codes of the units of `sub`, ordered as their labels `c:<class>` and `e:<episode>` sort as strings
    (so that the grid lays units out, and the bootstrap draws them, exactly as it would from the labels), and the
    labels by code. No string per unit is made: classes are ranked by name (codes 0, 1, ...), episodes by their
    decimal text (codes from `EPISODE_CODES` on)."""
    is_class = sub["class"].notna().to_numpy()
    cls_codes, cls_names = pd.factorize(sub["class"].array[is_class], sort=True)
    ep_codes, ep_values = pd.factorize(sub["episode"].array[~is_class], use_na_sentinel=False)
    ep_text = ["<NA>" if pd.isna(e) else str(e) for e in ep_values]
    order = sorted(range(len(ep_text)), key=ep_text.__getitem__)
    rank = np.empty(len(ep_text), np.int64)
    rank[order] = np.arange(len(ep_text))
    codes = np.empty(len(sub), np.int64)
    codes[is_class] = cls_codes
    codes[~is_class] = EPISODE_CODES + rank[ep_codes]
    labels = {**{i: f"c:{c}" for i, c in enumerate(cls_names)},
              **{EPISODE_CODES + j: f"e:{ep_text[i]}" for j, i in enumerate(order)}}
    return codes, labels


def pseudo_levels(frame: pd.DataFrame) -> pd.Series:
    """(method, split_level) -> True where some seed has only its aggregate (no interval there)."""
    if frame.empty:
        return pd.Series(dtype=bool)
    return frame.groupby(["method", "split_level"])["pseudo"].any()


def single_unit_levels(frame: pd.DataFrame, series: str = "method") -> pd.Series:
    """(series, split_level) -> True where the value rests on at most one unit over all seeds (one seed, one
    episode or class: no interval there) and not on a pseudo-unit (`pseudo_levels` names those)."""
    if frame.empty:
        return pd.Series(dtype=bool)
    g = frame.assign(real=~frame["pseudo"].astype(bool) & (frame["weight"] > 0)).groupby([series, "split_level"])
    return (g["real"].sum() <= 1) & ~g["pseudo"].any()


def coverage_notes(frame: pd.DataFrame, k: int, coverage: Coverage) -> None:
    """Record this k's levels without an interval, per reason (`NO_UNITS`, `ONE_UNIT`): the whole k at once when no
    method has one anywhere for that reason, else one line per method (`all levels` when it has none)."""
    n_levels = frame["split_level"].nunique()
    for blocked, whole, why in ((pseudo_levels(frame), coverage.uncovered_ks, NO_UNITS),
                                (single_unit_levels(frame), coverage.single_unit_ks, ONE_UNIT)):
        if len(blocked) and bool(blocked.all()):
            whole.append(k)
            continue
        for method, g in blocked[blocked].groupby(level=0):
            levels = ("all levels" if len(g) == n_levels and n_levels > 1
                      else ", ".join(f"L{int(lv)}" for lv in g.index.get_level_values(1)))
            coverage.notes.append(f"k={k} `{method}` {levels}: no interval, {why}")


def level_intervals(frame: pd.DataFrame | None, methods: list[str], fids: Mapping[int, float],
                    n_boot: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bootstrap intervals of each method's level values and of its mean and area over levels.

    Returns:
        (per level: `method, split_level, ci_low, ci_high`; per method: `method, ci_low, ci_high, auc_ci_low,
        auc_ci_high`). Levels resting on a pseudo-unit get no interval, and neither do that method's mean and auc.
    """
    from oodml.report.leaderboard import area_under_curve

    per_level = pd.DataFrame(columns=["method", "split_level", "ci_low", "ci_high"])
    over = pd.DataFrame({"method": methods, "ci_low": np.nan, "ci_high": np.nan, "auc_ci_low": np.nan,
                         "auc_ci_high": np.nan})
    sub = frame[frame["method"].isin(methods)] if frame is not None else None
    if sub is None or sub.empty or n_boot <= 0:
        return per_level, over
    grid = st.unit_grid(sub)
    reps = st.bootstrap_levels(grid, n_boot)
    point = st.level_means(grid)
    pseudo = pseudo_levels(sub) | single_unit_levels(sub)
    blocked = np.array([[bool(pseudo.get((m, lv), False)) for lv in grid.levels] for m in grid.series], bool)
    reps[blocked] = np.nan
    lo, hi = st.percentile_interval(reps)
    per_level = pd.DataFrame({"method": np.repeat(grid.series, len(grid.levels)),
                              "split_level": np.tile(grid.levels, len(grid.series)),
                              "ci_low": lo.ravel(), "ci_high": hi.ravel()})
    x = np.array([fids.get(lv, np.nan) for lv in grid.levels], float)
    for i, m in enumerate(grid.series):
        have = np.isfinite(point[i])
        if not have.any() or blocked[i][have].any():
            continue
        mean_reps = reps[i][have].mean(axis=0)
        auc_reps = area_under_curve(x[have], reps[i][have].T)
        j = over.index[over["method"] == m]
        over.loc[j, ["ci_low", "ci_high"]] = st.percentile_interval(mean_reps)
        over.loc[j, ["auc_ci_low", "auc_ci_high"]] = st.percentile_interval(auc_reps)
    return per_level, over


def paired_frame(frame: pd.DataFrame, pairs: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """The units that both methods of each pair have (same level, seed and unit), as one row per (pair, unit) with
    `value_a`, `value_b`, `value` = a - b, `weight` (a's) and `pseudo` (either side a pseudo-unit)."""
    key = ["split_level", "seed", "unit"]
    parts = []
    rows_of = frame.groupby("method", sort=False, observed=True).indices  # one pass, not two scans per pair
    for label, (a, b) in pairs.items():
        if a not in rows_of or b not in rows_of:
            continue
        fa = frame.iloc[rows_of[a]]
        fb = frame.iloc[rows_of[b]]
        both = fa.merge(fb, on=key, suffixes=("_a", "_b"))
        if both.empty:
            continue
        parts.append(pd.DataFrame({"pair": label, "split_level": both["split_level"], "seed": both["seed"],
                                   "unit": both["unit"], "value_a": both["value_a"], "value_b": both["value_b"],
                                   "value": both["value_a"] - both["value_b"], "weight": both["weight_a"],
                                   "pseudo": both["pseudo_a"] | both["pseudo_b"]}))
    cols = ["pair", "split_level", "seed", "unit", "value_a", "value_b", "value", "weight", "pseudo"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def paired_differences(frame: pd.DataFrame, pairs: Mapping[str, tuple[str, str]], fids: Mapping[int, float],
                       n_boot: int, *, intervals: bool = True, seeds_only: bool = False) -> pd.DataFrame:
    """Per pair, per level and over levels: the mean paired difference a - b on shared units, its bootstrap
    interval, the two-sided sign-flip p-value and (per level) Holm's adjustment over the pair's levels.

    Args:
        frame: `unit_frame` of one (k, metric).
        pairs: label -> (method a, method b).
        fids: level -> FID.
        n_boot: bootstrap replicates, also the Monte Carlo sign patterns (0: no intervals, no p-values).
        intervals: False: p-values only (no bootstrap).
        seeds_only: also give intervals and p-values where a seed has only its aggregate (a pseudo-unit): they
            then rest on the seeds alone.

    Returns:
        `DIFF_COLUMNS`; the row over levels has `split_level` NaN (the mean of the level differences).
    """
    diffs = paired_frame(frame, pairs)
    if diffs.empty:
        return pd.DataFrame(columns=list(DIFF_COLUMNS))
    d_grid = st.unit_grid(diffs, series="pair")
    a_grid = st.unit_grid(diffs.assign(value=diffs["value_a"]), series="pair")
    b_grid = st.unit_grid(diffs.assign(value=diffs["value_b"]), series="pair")
    point, mean_a, mean_b = st.level_means(d_grid), st.level_means(a_grid), st.level_means(b_grid)
    reps = st.bootstrap_levels(d_grid, n_boot if intervals else 0)
    pseudo = diffs.groupby(["pair", "split_level"])["pseudo"].any()
    single = single_unit_levels(diffs, series="pair")
    blocked = np.array([[(bool(pseudo.get((s, lv), False)) and not seeds_only) or bool(single.get((s, lv), False))
                         for lv in d_grid.levels] for s in d_grid.series], bool)
    reps[blocked] = np.nan
    lo, hi = st.percentile_interval(reps)
    coef_level = st.flip_coefficients(d_grid, over_levels=False)
    coef_all = st.flip_coefficients(d_grid, over_levels=True)
    terms = coef_level * d_grid.values
    p_level = np.stack([st.sign_flip_p(terms[:, j].reshape(len(d_grid.series), -1), n_boot)
                        for j in range(len(d_grid.levels))], axis=1)
    p_level[blocked] = np.nan
    p_all = st.sign_flip_p((coef_all * d_grid.values).reshape(len(d_grid.series), -1), n_boot)
    n_seeds = d_grid.seed_present.sum(axis=-1)
    n_units = (d_grid.weights > 0).sum(axis=(2, 3))
    rows = []
    for i, label in enumerate(d_grid.series):
        a, b = pairs[label]
        have = np.isfinite(point[i])
        p_holm = st.holm(np.where(have, p_level[i], np.nan))
        for j, lv in enumerate(d_grid.levels):
            if have[j]:
                rows.append([label, a, b, lv, fids.get(lv, np.nan), int(n_seeds[i, j]), int(n_units[i, j]),
                             mean_a[i, j], mean_b[i, j], point[i, j], lo[i, j], hi[i, j], p_level[i, j], p_holm[j]])
        if have.any():
            ok = not blocked[i][have].any()
            m_lo, m_hi = st.percentile_interval(reps[i][have].mean(axis=0)) if ok else (np.nan, np.nan)
            rows.append([label, a, b, np.nan, np.nan, int(n_seeds[i][have].max()), int(n_units[i][have].sum()),
                         float(mean_a[i][have].mean()), float(mean_b[i][have].mean()), float(point[i][have].mean()),
                         float(m_lo), float(m_hi), float(p_all[i]) if ok else np.nan, np.nan])
    out = pd.DataFrame(rows, columns=list(DIFF_COLUMNS))
    out["split_level"] = out["split_level"].astype("Int64")
    return out


def vs_best(frame: pd.DataFrame, best: str, others: list[str], fids: Mapping[int, float],
            n_boot: int) -> pd.DataFrame:
    """`method, vs_best_p, vs_best_p_holm`: the sign-flip p-value of each method's mean over levels against the
    rank-1 method on their shared units, and Holm's adjustment over the methods."""
    pairs = {m: (m, best) for m in others if m != best}
    diffs = (paired_differences(frame, pairs, fids, n_boot, intervals=False) if pairs
             else pd.DataFrame(columns=list(DIFF_COLUMNS)))
    over = diffs[diffs["split_level"].isna()].set_index("pair")["p"]
    p = np.array([float(over.get(m, np.nan)) for m in pairs], float)
    out = pd.DataFrame({"method": list(pairs), "vs_best_p": p, "vs_best_p_holm": st.holm(p)})
    return out
