"""Coverage of the report's intervals and size of its tests, on simulated data with a known truth.

Each replicate simulates one study the way oodml's results are made: L levels x S seeds x U units (test classes or
episodes). The split's units are the same for every seed (a unit effect shared by all seeds: the truth a benchmark
reports is conditional on its split's test classes and episodes), each seed is one training run (a seed effect per
level, normal or skewed), and each (seed, unit) value has its own noise (the seed x unit interaction: normal or
skewed). A paired comparison simulates two methods on the same units with correlated noise. The report's own code
computes every interval and p-value: per-seed weighted means as `oodml.report.intervals.seed_table` forms them, then
`oodml.report.stats.contrast` (a check at start-up runs `intervals.paired_differences` on unit frames and asserts the
same numbers).

Grid: seeds 2, 3, 5, 10; units 10, 100, 600; sigma_seed / SE_unit 0, 0.7, 2.8, 10 (SE_unit: the standard error of a
seed's mean from its units' noise); designs: balanced, unbalanced (units weighted by query counts from 1 to 60,
skewed noise and seed effects), missing seeds (each (level, seed) absent with probability 1/4, unbalanced); interval
kinds: a level's value, the mean over 4 levels, the area under the curve, a paired difference over levels, and a gain
trend (the difference at the last level minus at the first). Targets: coverage 0.93-0.97 in every cell with >= 3
seeds; the t test's rejection rate under the null between 0.035 and 0.065 (and the sign-flip test's from 7 seeds
on). Then the planner: `stats.seeds_needed` for known components, and the power a simulation reaches with that many
seeds (target 0.8 +- 0.1); and planned from 3-seed pilots, as `oodml plan` would.

Usage: python benchmarks/coverage.py [--reps 2000] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np
import pandas as pd

from oodml.report import intervals as iv, stats as st

SEEDS = (2, 3, 5, 10)
UNITS = (10, 100, 600)
RATIOS = (0.0, 0.7, 2.8, 10.0)
DESIGNS = ("balanced", "unbalanced", "missing seeds")
#: A robustness design outside the targets: seed effects from a centred exponential (skewness 2).
STRESS = ("skewed seeds",)
KINDS = ("level", "mean", "auc", "paired", "trend")
FIDS = np.array([10.0, 25.0, 45.0, 80.0])
SIGMA_UNIT = 0.1  # sd of a (seed, unit) value's own noise
SIGMA_SHARED = 0.1  # sd of a unit's effect shared by all seeds


def _noise(rng: np.random.Generator, shape: tuple[int, ...], skewed: bool) -> np.ndarray:
    """Mean 0, sd 1: normal, or a centred exponential (skewness 2)."""
    return rng.exponential(1.0, shape) - 1.0 if skewed else rng.normal(0.0, 1.0, shape)


def _weights(rng: np.random.Generator, n_units: int, design: str) -> np.ndarray:
    return np.ones(n_units) if design == "balanced" else rng.integers(1, 61, n_units).astype(float)


def simulate(rng: np.random.Generator, reps: int, n_levels: int, n_seeds: int, n_units: int, ratio: float,
             design: str, delta: float, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """(per-seed values (reps, level, seed) with NaN for missing seeds, the truth per (reps, level)).

    The per-seed value is the weighted unit mean of one method (or of a - b on shared units when `paired`); the
    truth is the same mean without seed effects and seed x unit noise (conditional on the split's units).
    """
    skewed = design != "balanced"  # skewed unit noise
    w = _weights(rng, n_units, design)
    se_unit = SIGMA_UNIT * np.sqrt((w ** 2).sum()) / w.sum()  # sd of a seed's mean from its own noise
    sigma_seed = ratio * se_unit
    shape = (reps, n_levels, n_seeds, n_units)
    level_truth = np.linspace(0.8, 0.5, n_levels)[None, :] + (delta if paired else 0.0)
    if paired:  # a - b on the same units: their shared unit effect cancels, each method's own noise remains
        noise = SIGMA_UNIT * (_noise(rng, shape, skewed) - _noise(rng, shape, skewed)) / np.sqrt(2)
        unit_effect = np.zeros((reps, n_levels, 1, n_units))
        level_truth = np.full((1, n_levels), delta)
    else:
        noise = SIGMA_UNIT * _noise(rng, shape, skewed)
        unit_effect = SIGMA_SHARED * rng.normal(size=(reps, n_levels, 1, n_units))
    seed_effect = sigma_seed * _noise(rng, (reps, n_levels, n_seeds), design == "skewed seeds")
    values = level_truth[..., None, None] + unit_effect + noise + seed_effect[..., None]
    per_seed = (values * w).sum(axis=-1) / w.sum()
    truth = level_truth + (unit_effect[:, :, 0] * w).sum(axis=-1) / w.sum()
    if design == "missing seeds":
        drop = rng.random((reps, n_levels, n_seeds)) < 0.25
        drop[..., 0] = False  # every level keeps one seed
        per_seed = np.where(drop, np.nan, per_seed)
    return per_seed, np.broadcast_to(truth, (reps, n_levels))


def coefficients(kind: str, n_levels: int) -> np.ndarray:
    if kind == "auc":
        return st.area_weights(FIDS[:n_levels])
    if kind == "trend":
        c = np.zeros(n_levels)
        c[0], c[-1] = -1.0, 1.0
        return c
    return np.full(n_levels, 1.0 / n_levels)


def cell(rng: np.random.Generator, reps: int, kind: str, design: str, n_seeds: int, n_units: int,
         ratio: float) -> tuple[float, float]:
    """(coverage of the 95% interval, share of replicates with an interval)."""
    n_levels = 1 if kind == "level" else len(FIDS)
    paired = kind in ("paired", "trend")
    hits = total = 0
    for start in range(0, reps, 250):
        r = min(250, reps - start)
        y, truth = simulate(rng, r, n_levels, n_seeds, n_units, ratio, design, 0.03, paired)
        c = coefficients(kind, n_levels)
        e = st.contrast(y, c)
        target = (truth * c).sum(axis=-1)
        ok = np.isfinite(e.low)
        hits += int(((e.low <= target) & (target <= e.high))[ok].sum())
        total += int(ok.sum())
    return hits / max(total, 1), total / reps


def null_rejection(rng: np.random.Generator, reps: int, design: str, n_seeds: int, n_units: int,
                   ratio: float) -> tuple[float, float]:
    """(t test, sign-flip test) rejection rates at 0.05 of a paired difference over levels with no true difference
    (the sign-flip rate is NaN below `stats.SIGN_FLIP_MIN_SEEDS` seeds)."""
    rej_t = rej_f = n_t = n_f = 0
    for start in range(0, reps, 250):
        r = min(250, reps - start)
        y, _ = simulate(rng, r, len(FIDS), n_seeds, n_units, ratio, design, 0.0, True)
        e = st.contrast(y, coefficients("mean", len(FIDS)), flip=n_seeds >= st.SIGN_FLIP_MIN_SEEDS)
        ok = np.isfinite(e.p)
        rej_t += int((e.p[ok] < st.ALPHA).sum())
        n_t += int(ok.sum())
        okf = np.isfinite(e.p_flip)
        rej_f += int((e.p_flip[okf] < st.ALPHA).sum())
        n_f += int(okf.sum())
    return rej_t / max(n_t, 1), (rej_f / n_f if n_f else float("nan"))


def check_pipeline(rng: np.random.Generator) -> None:
    """The vectorised path equals `intervals.paired_differences` on the same units laid out as unit frames."""
    n_levels, n_seeds, n_units = 3, 4, 7
    rows = []
    for lv, s in itertools.product(range(1, n_levels + 1), range(n_seeds)):
        w = rng.integers(1, 9, n_units).astype(float)
        b = rng.uniform(0.3, 0.7, n_units)
        a = b + 0.02 + rng.normal(0, 0.05, n_units) + rng.normal(0, 0.02)
        for m, v in (("a", a), ("b", b)):
            rows += [{"method": m, "split_level": lv, "seed": s, "unit": u, "value": v[u], "weight": w[u],
                      "pseudo": False} for u in range(n_units)]
    frame = pd.DataFrame(rows)
    d = iv.paired_differences(frame, {"d": ("a", "b")}, {1: 10.0, 2: 20.0, 3: 30.0})
    _, _, _, y = iv.seed_table(iv.paired_frame(frame, {"d": ("a", "b")}), series="pair")
    e = st.contrast(y[0], np.full(n_levels, 1.0 / n_levels))
    over = d[d["split_level"].isna()].iloc[0]
    assert np.allclose([over["diff"], over["ci_low"], over["ci_high"], over["p"]],
                       [float(e.estimate), float(e.low), float(e.high), float(e.p)], rtol=1e-12, atol=1e-15)


def planner(rng: np.random.Generator, reps: int) -> list[str]:
    """Planned seed counts against simulated power: known components, then components from 3-seed pilots."""
    lines = ["| delta | between | within | planned seeds | simulated power | from 3-seed pilots: median planned "
             "seeds (IQR) | median power reached |", "|---|---|---|---|---|---|---|"]
    for delta, between, within in ((0.007, 1.9e-5, 6.8e-6), (0.01, 1e-4, 0.0), (0.02, 1e-4, 3e-4),
                                   (0.05, 4e-4, 4e-4)):
        n = st.seeds_needed(delta, between, within)
        assert n is not None
        sd = np.sqrt(between + within)

        def power_at(n_seeds: int) -> float:
            z = delta + sd * rng.normal(size=(reps, 1, n_seeds))
            return float((st.contrast(z, np.ones(1)).p < st.ALPHA).mean())

        pilots = delta + sd * rng.normal(size=(min(reps, 400), 3))
        planned = np.array([st.seeds_needed(float(p.mean()), float(p.var(ddof=1)), 0.0) or 10_000 for p in pilots])
        reached = [power_at(int(min(m, 200))) for m in np.percentile(planned, [50])]
        q1, q3 = np.percentile(planned, [25, 75])
        lines.append(f"| {delta} | {between:.2g} | {within:.2g} | {n} | {power_at(n):.3f} | {np.median(planned):.0f} "
                     f"({q1:.0f}-{q3:.0f}) | {reached[0]:.3f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000, help="replicates per cell")
    ap.add_argument("--quick", action="store_true", help="seeds 3 and 10, units 10 and 100 only")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rng = np.random.default_rng(2026)
    check_pipeline(rng)
    seeds = (3, 10) if args.quick else SEEDS
    units = (10, 100) if args.quick else UNITS
    print(f"# coverage of the report's 95% seed-level t intervals ({args.reps} replicates per cell; load average "
          f"{os.getloadavg()[0]:.1f})\n")
    header = "| kind | design | seeds | " + " | ".join(f"r={r:g} U={u}" for r in RATIOS for u in units) + " |"
    print(header)
    print("|" + "---|" * (3 + len(RATIOS) * len(units)))
    worst = []
    stress = []
    for kind, design, s in itertools.product(KINDS, DESIGNS + STRESS, seeds):
        cov = [cell(rng, args.reps, kind, design, s, u, r)[0] for r in RATIOS for u in units]
        print(f"| {kind} | {design} | {s} | " + " | ".join(f"{c:.3f}" for c in cov) + " |", flush=True)
        if s >= 3:
            (stress if design in STRESS else worst).extend(cov)
    mc = 1.96 * np.sqrt(0.95 * 0.05 / args.reps)
    inside = sum(0.93 <= c <= 0.97 for c in worst)
    print(f"\ncells with >= 3 seeds: {len(worst)}; coverage min {min(worst):.3f}, max {max(worst):.3f}; within "
          f"0.93-0.97: {inside} of {len(worst)} (Monte Carlo 95% band of one cell at 0.95: +-{mc:.3f}); "
          f"skewed seeds (outside the targets): min {min(stress):.3f}, max {max(stress):.3f}")
    print("\n# rejection rate at 0.05 under the null (paired difference over 4 levels, no true difference)\n")
    print("| design | seeds | test | " + " | ".join(f"r={r:g} U={u}" for r in RATIOS for u in units) + " |")
    print("|" + "---|" * (3 + len(RATIOS) * len(units)))
    rates = []
    for design, s in itertools.product(DESIGNS + STRESS, seeds):
        res = [null_rejection(rng, args.reps, design, s, u, r) for r in RATIOS for u in units]
        print(f"| {design} | {s} | t | " + " | ".join(f"{t:.3f}" for t, _ in res) + " |")
        keep = rates if design not in STRESS else []
        keep += [t for t, _ in res]
        if s >= st.SIGN_FLIP_MIN_SEEDS:
            print(f"| {design} | {s} | sign-flip | " + " | ".join(f"{f:.3f}" for _, f in res) + " |")
            keep += [f for _, f in res]
    print(f"\nrejection rates (designs within the targets): min {min(rates):.3f}, max {max(rates):.3f} (target "
          "0.035-0.065)")
    print("\n# planner: seeds for 80% power (two-sided t test over seeds at 0.05)\n")
    print("\n".join(planner(rng, args.reps)))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
