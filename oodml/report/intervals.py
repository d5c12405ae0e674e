"""Seed-level intervals and paired tests for the report's tables, from the store's per-seed values.

`unit_frame` turns the stored units of one (k, metric) into the long table the report works on: one row per unit
(episode or test class) with its weight, and, for a (method, level, seed) whose cell file has no per-unit values
(written before oodml stored them), one pseudo-unit, its aggregate. Each seed's value is the weighted mean of its
units (exactly the stored aggregate), and every interval and p-value rests on those per-seed values
(`oodml.report.stats.contrast`): the seed, one source fit, is the replication unit; the units nested in it only make
its value what it is. A value on one seed gets no interval (`stats.ONE_SEED`), and the report says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from oodml.report import stats as st

#: Columns of `unit_frame`.
FRAME_COLUMNS = ("method", "split_level", "seed", "unit", "value", "weight", "pseudo")
#: Columns of `paired_differences`.
DIFF_COLUMNS = ("pair", "method_a", "method_b", "split_level", "fid", "n_seeds", "n_units", "mean_a", "mean_b",
                "diff", "se", "ci_low", "ci_high", "p", "p_holm", "p_flip", "note")
#: Unit codes of episodes start here (class codes below it, -1 for a pseudo-unit): the codes sort as the labels
#: `c:<class>` < `e:<episode>` do.
EPISODE_CODES = 1 << 32


@dataclass
class Coverage:
    """Which (k, method, level) rest on too few seeds for an interval, or on two (a t(1) interval).

    Attributes:
        notes: one line per k and method whose levels (some or all) rest on one seed.
        one_seed_ks: the ks where every value rests on one seed (named once in `lines`, not per method).
        two_seed_ks: the ks where some value rests on two seeds.
    """

    notes: list[str] = field(default_factory=list)
    one_seed_ks: list[int] = field(default_factory=list)
    two_seed_ks: list[int] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report's lines: the wholly one-seed ks, the two-seed ks, then the per-method notes."""
        head = []
        if self.one_seed_ks:
            head.append(f"k = {', '.join(map(str, self.one_seed_ks))}: no value has an interval ({st.ONE_SEED}: "
                        "means only, no p-value, and the curves draw no band); run more seeds (`--seeds 0..4`)")
        if self.two_seed_ks:
            head.append(f"k = {', '.join(map(str, self.two_seed_ks))}: some values rest on {st.seed_note(2)}: wide "
                        "by design")
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


def seed_table(frame: pd.DataFrame, series: str = "method") -> tuple[tuple[str, ...], tuple[int, ...],
                                                                      tuple[int, ...], np.ndarray]:
    """(series names, levels, seeds, values (series, level, seed)): each seed's weighted mean of its units in a unit
    frame (or a `paired_frame`), NaN where a seed has none."""
    names, levels, seeds, tables = seed_tables(frame, series, ("value",))
    return names, levels, seeds, tables["value"]


def seed_tables(frame: pd.DataFrame, series: str, columns: Sequence[str]) -> tuple[
        tuple[str, ...], tuple[int, ...], tuple[int, ...], dict[str, np.ndarray]]:
    """`seed_table` of several value columns of one frame in one pass: column -> (series, level, seed) array."""
    if frame.empty:
        return (), (), (), {c: np.zeros((0, 0, 0)) for c in columns}
    w = frame["weight"].to_numpy(float)
    g = pd.DataFrame({"s": frame[series].astype(str).to_numpy(), "l": frame["split_level"].to_numpy(np.int64),
                      "d": frame["seed"].to_numpy(np.int64), "w": w,
                      **{f"wv{i}": w * frame[c].to_numpy(float) for i, c in enumerate(columns)}})
    agg = g.groupby(["s", "l", "d"], sort=True)[["w", *(f"wv{i}" for i in range(len(columns)))]].sum()
    names = tuple(sorted(agg.index.get_level_values(0).unique()))
    levels = tuple(sorted(int(v) for v in agg.index.get_level_values(1).unique()))
    seeds = tuple(sorted(int(v) for v in agg.index.get_level_values(2).unique()))
    i = np.searchsorted(names, agg.index.get_level_values(0).to_numpy(str))
    j = np.searchsorted(levels, agg.index.get_level_values(1).to_numpy(np.int64))
    d = np.searchsorted(seeds, agg.index.get_level_values(2).to_numpy(np.int64))
    tables = {}
    for k, c in enumerate(columns):
        out = np.full((len(names), len(levels), len(seeds)), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i, j, d] = np.where(agg["w"].to_numpy() > 0, agg[f"wv{k}"].to_numpy() / agg["w"].to_numpy(), np.nan)
        tables[c] = out
    return names, levels, seeds, tables


def seed_counts(frame: pd.DataFrame, series: str = "method") -> pd.Series:
    """(series, split_level) -> the number of seeds with a value there."""
    if frame.empty:
        return pd.Series(dtype=np.int64)
    return frame.groupby([series, "split_level"])["seed"].nunique()


def coverage_notes(frame: pd.DataFrame, k: int, coverage: Coverage) -> None:
    """Record this k's values that rest on one seed (no interval) or two (a t(1) interval): the whole k at once when
    every value rests on one seed, else one line per method and its one-seed levels."""
    counts = seed_counts(frame)
    if counts.empty:
        return
    if bool((counts <= 1).all()):
        coverage.one_seed_ks.append(k)
        return
    if bool((counts == 2).any()):
        coverage.two_seed_ks.append(k)
    n_levels = frame["split_level"].nunique()
    for method, g in counts[counts <= 1].groupby(level=0):
        levels = ("all levels" if len(g) == n_levels and n_levels > 1
                  else ", ".join(f"L{int(lv)}" for lv in g.index.get_level_values(1)))
        coverage.notes.append(f"k={k} `{method}` {levels}: no interval, {st.ONE_SEED}")


def level_intervals(frame: pd.DataFrame | None, methods: list[str],
                    fids: Mapping[int, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seed-level t intervals of each method's level values and of its mean and area over levels.

    Returns:
        (per level: `method, split_level, n_seeds, ci_low, ci_high`; per method: `method, n_seeds, ci_low, ci_high,
        auc_ci_low, auc_ci_high`): NaN where a value rests on one seed. The mean and area over levels are contrasts of
        the levels the method has values at, with the seeds as clusters.
    """
    per_level = pd.DataFrame(columns=["method", "split_level", "n_seeds", "ci_low", "ci_high"])
    over = pd.DataFrame({"method": methods, "n_seeds": 0, "ci_low": np.nan, "ci_high": np.nan, "auc_ci_low": np.nan,
                         "auc_ci_high": np.nan})
    sub = frame[frame["method"].isin(methods)] if frame is not None else None
    if sub is None or sub.empty:
        return per_level, over
    names, levels, _, y = seed_table(sub)
    each = st.contrast(y[:, :, None, :], np.ones(1))  # (series, level): every level on its own
    per_level = pd.DataFrame({"method": np.repeat(names, len(levels)), "split_level": np.tile(levels, len(names)),
                              "n_seeds": each.n_seeds.ravel().astype(int), "ci_low": each.low.ravel(),
                              "ci_high": each.high.ravel()})
    x = np.array([fids.get(lv, np.nan) for lv in levels], float)
    for i, m in enumerate(names):
        have = np.isfinite(y[i]).any(axis=-1)
        if not have.any():
            continue
        mean = st.contrast(y[i][have], np.full(int(have.sum()), 1.0 / have.sum()))
        auc = st.contrast(y[i][have], st.area_weights(x[have]))
        j = over.index[over["method"] == m]
        over.loc[j, ["n_seeds", "ci_low", "ci_high", "auc_ci_low", "auc_ci_high"]] = [
            int(mean.n_seeds), float(mean.low), float(mean.high), float(auc.low), float(auc.high)]
    over["n_seeds"] = over["n_seeds"].astype(int)
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
                       n_resamples: int = st.DEFAULT_BOOTSTRAP, *, tests_only: bool = False) -> pd.DataFrame:
    """Per pair, per level and over levels: the mean paired difference a - b on shared units, its seed-level 95% t
    interval, the paired t test over seeds, Holm's adjustment over the pair's levels, and (from
    `stats.SIGN_FLIP_MIN_SEEDS` seeds on) the exact sign-flip p-value over seeds.

    Args:
        frame: `unit_frame` of one (k, metric).
        pairs: label -> (method a, method b).
        fids: level -> FID.
        n_resamples: Monte Carlo sign patterns beyond exact enumeration (many seeds only).
        tests_only: skip the sign-flip test (the t test is always computed).

    Returns:
        `DIFF_COLUMNS`; the row over levels has `split_level` NaN (the mean of the level differences, a contrast
        over the levels both methods have, with the seeds as clusters); `note` says why a value has no interval.
    """
    diffs = paired_frame(frame, pairs)
    if diffs.empty:
        return pd.DataFrame(columns=list(DIFF_COLUMNS))
    names, levels, _, tables = seed_tables(diffs, "pair", ("value", "value_a", "value_b"))
    d, ya, yb = tables["value"], tables["value_a"], tables["value_b"]
    flip = not tests_only
    each = st.contrast(d[:, :, None, :], np.ones(1), flip=flip, n_resamples=n_resamples)
    n_units = diffs.groupby(["pair", "split_level"])["unit"].count()
    rows = []
    for i, label in enumerate(names):
        a, b = pairs[label]
        have = np.isfinite(d[i]).any(axis=-1)
        p_holm = st.holm(np.where(have, each.p[i], np.nan))
        for j, lv in enumerate(levels):
            if have[j]:
                rows.append([label, a, b, lv, fids.get(lv, np.nan), int(each.n_seeds[i, j]),
                             int(n_units.get((label, lv), 0)), np.nanmean(ya[i, j]), np.nanmean(yb[i, j]),
                             each.estimate[i, j], each.se[i, j], each.low[i, j], each.high[i, j], each.p[i, j],
                             p_holm[j], each.p_flip[i, j], st.seed_note(int(each.n_seeds[i, j]))])
        if have.any():
            coef = np.full(int(have.sum()), 1.0 / have.sum())
            over = st.contrast(d[i][have], coef, flip=flip, n_resamples=n_resamples)
            m_a = st.contrast(ya[i][have], coef).estimate
            m_b = st.contrast(yb[i][have], coef).estimate
            rows.append([label, a, b, np.nan, np.nan, int(over.n_seeds),
                         int(sum(n_units.get((label, lv), 0) for lv, h in zip(levels, have) if h)), float(m_a),
                         float(m_b), float(over.estimate), float(over.se), float(over.low), float(over.high),
                         float(over.p), np.nan, float(over.p_flip), st.seed_note(int(over.n_seeds))])
    out = pd.DataFrame(rows, columns=list(DIFF_COLUMNS))
    out["split_level"] = out["split_level"].astype("Int64")
    return out


def vs_best(frame: pd.DataFrame, best: str, others: list[str], fids: Mapping[int, float]) -> pd.DataFrame:
    """`method, vs_best_p, vs_best_p_holm`: the paired seed-level t test of each method's mean over levels against
    the rank-1 method (their shared levels and seeds), and Holm's adjustment over the methods."""
    pairs = {m: (m, best) for m in others if m != best}
    diffs = (paired_differences(frame, pairs, fids, tests_only=True) if pairs
             else pd.DataFrame(columns=list(DIFF_COLUMNS)))
    over = diffs[diffs["split_level"].isna()].set_index("pair")["p"]
    p = np.array([float(over.get(m, np.nan)) for m in pairs], float)
    return pd.DataFrame({"method": list(pairs), "vs_best_p": p, "vs_best_p_holm": st.holm(p)})
