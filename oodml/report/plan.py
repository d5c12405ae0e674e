"""`oodml plan A B`: how many seeds (and episodes) a study needs to resolve A - B, from a pilot results folder.

The pilot's per-seed paired differences give the seed-to-seed variance of the contrast (the mean over levels, or one
level); its per-unit values give the part of it that is episode or class noise inside a seed (the squared standard
error of a seed's mean). The rest is the *between-seed* component, which only more seeds shrink. With n seeds and m
times the pilot's units per seed, a seed's contrast has variance between + within / m, and the seed-level t test
(`oodml.report.stats`) has the power of a one-sample t test on n values: `stats.seeds_needed` inverts it.
`benchmarks/coverage.py` checks the planned seed counts against simulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from oodml.errors import OodmlError
from oodml.report import intervals as iv, stats as st
from oodml.report.compare import pair_metric, paired_levels, read_pair
from oodml.report.leaderboard import seed_values

#: Unit multipliers the plan shows (more episodes: `oodml make-splits --episodes`; classes are fixed by the split).
UNIT_FACTORS = (1, 2, 5)
#: Seed counts whose expected interval width the plan shows.
SEED_COUNTS = (3, 5, 10, 20)


@dataclass(frozen=True)
class Plan:
    """Variance components of one contrast and what they imply (`within`: the seed x unit interaction's part, the
    only unit noise that differs between seeds and that more units per seed shrink).

    Attributes:
        dataset: the dataset.
        k: shots.
        metric: the metric.
        what: `mean over levels 1-8` or `level 3`.
        n_seeds: pilot seeds.
        units_per_seed: the pilot's units per seed and level (median).
        unit_kind: `episodes` or `classes`.
        observed: the pilot's estimate of A - B.
        delta: the difference to resolve.
        between: between-seed variance component of one seed's contrast.
        within: squared standard error of one seed's contrast from its units.
        needed: unit factor -> seeds needed for 80% power at 0.05 (None: beyond 10,000).
        widths: seed count -> expected 95% half-width at the pilot's units.
    """

    dataset: str
    k: int
    metric: str
    what: str
    n_seeds: int
    units_per_seed: int
    unit_kind: str
    observed: float
    delta: float
    between: float
    within: float
    needed: dict[int, int | None]
    widths: dict[int, float]


def plan_command(*, results: Path, a: str, b: str, k: int, metric: str | None = None, delta: float | None = None,
                 level: int | None = None, power: float = 0.8) -> list[Plan]:
    """Plan A - B for every dataset of `results` that holds both.

    Args:
        results: a pilot results folder (at least 2 seeds; 3 or more recommended).
        a: first method.
        b: second method.
        k: shots.
        metric: the metric (default recall@1, else accuracy).
        delta: the difference to resolve (default: the pilot's estimate).
        level: plan one level instead of the mean over levels.
        power: target power of the two-sided 0.05 test.

    Raises:
        OodmlError: unknown methods, fewer than 2 pilot seeds, unpaired cells.
    """
    store, ok = read_pair(Path(results), a, b)
    out = []
    for dataset in store.datasets:
        rows = ok[(ok["dataset"] == dataset) & ok["method"].isin([a, b]) & (ok["k_shot"] == k)]
        rows = rows.astype({"method": str, "metric": str})
        if set(rows["method"]) != {a, b}:
            continue
        m = pair_metric(rows, k, metric, a, b, dataset)
        units = store.units[(store.units["dataset"] == dataset) & store.units["method"].isin([a, b])]
        frame = iv.unit_frame(units, seed_values(rows), k=k, metric=m)
        frame = paired_levels(frame, rows[rows["metric"] == m], a, b, k, (level,) if level else None, dataset,
                               iv.unit_labels(units, k=k, metric=m))
        out.append(_plan(frame, a, b, dataset, k, m, delta, level, power))
    if not out:
        raise OodmlError(f"{a!r} and {b!r} share no dataset with ok rows at k={k} in {str(results)!r}")
    return out


def _plan(frame: pd.DataFrame, a: str, b: str, dataset: str, k: int, metric: str, delta: float | None,
          level: int | None, power: float) -> Plan:
    diffs = iv.paired_frame(frame, {"d": (a, b)})
    _, levels, seeds, y = iv.seed_table(diffs, series="pair")
    y = y[0]  # (level, seed)
    if len(seeds) < 2:
        raise OodmlError(f"{dataset} k={k}: the pilot has {len(seeds)} seed; a plan needs the seed-to-seed spread: "
                         "run the pilot with --seeds 0..2")
    coef = np.full(len(levels), 1.0 / len(levels))
    est = st.contrast(y, coef)
    n = int(est.n_seeds)
    total = float(est.se) ** 2 * n  # the variance of one seed's contrast
    real = diffs[~diffs["pseudo"].astype(bool)]
    within = float("nan")
    if len(real):
        grid = st.unit_grid(real, series="pair")
        w = st.within_seed_variance(grid)[0]  # (level,): a seed's squared standard error from its units
        lv_idx = [grid.levels.index(lv) for lv in levels if lv in grid.levels]
        if len(lv_idx) == len(levels) and np.isfinite(w[lv_idx]).all():
            within = float((coef ** 2 * w[lv_idx]).sum())
    within = within if np.isfinite(within) else 0.0
    between = max(total - within, 0.0)
    within = min(within, total)
    d = float(est.estimate) if delta is None else float(delta)
    kind = iv.unit_kind(real["unit"]) if len(real) else "units"
    factors = (1,) if kind == "classes" else UNIT_FACTORS  # the split fixes its test classes
    needed = {f: st.seeds_needed(d, between, within / f, target=power) for f in factors}
    widths = {s: st.expected_half_width(between, within, s) for s in SEED_COUNTS}
    per_unit = real.groupby(["split_level", "seed"])["unit"].nunique().median() if len(real) else 0
    what = f"level {levels[0]}" if level else f"mean over levels {levels[0]}-{levels[-1]}"
    return Plan(dataset, k, metric, what, n, int(per_unit) if np.isfinite(per_unit) else 0,
                kind, float(est.estimate), d, between, within,
                needed, widths)


def render(p: Plan, a: str, b: str, power: float = 0.8) -> str:
    """The plan as text: components, seeds needed per unit factor, expected widths."""
    share = p.between / (p.between + p.within) if p.between + p.within > 0 else float("nan")
    lines = [f"{p.dataset}: {p.metric}, k={p.k}, {a} minus {b}, {p.what}",
             f"  pilot: {p.n_seeds} seeds x {p.units_per_seed} {p.unit_kind} per level; observed difference "
             f"{p.observed:+.4f}",
             f"  variance of one seed's difference: {p.between + p.within:.3g} = between seeds {p.between:.3g} + "
             f"{p.unit_kind} within a seed {p.within:.3g} ({100 * share:.0f}% between seeds)"
             if np.isfinite(share) else "  variance of one seed's difference: 0 (the seeds agree exactly)",
             f"  to resolve {p.delta:+.4f} with {100 * power:.0f}% power (two-sided t test over seeds, 0.05):"]
    for f, n in p.needed.items():
        more = "the pilot's" if f == 1 else f"{f}x the pilot's"
        lines.append(f"    {more} {p.unit_kind} per seed: "
                     + (f"{n} seeds" if n is not None else "more than 10,000 seeds (not resolvable)"))
    if p.unit_kind == "classes":
        lines.append("    (test classes are fixed by the split: only more seeds shrink this)")
    lines.append("  expected 95% interval half-width at the pilot's units: "
                 + ", ".join(f"{s} seeds ±{w:.4f}" for s, w in p.widths.items()))
    if p.n_seeds < 3:
        lines.append(f"  note: {p.n_seeds} pilot seeds estimate the spread poorly; plan again after 3 or more")
    return "\n".join(lines)
