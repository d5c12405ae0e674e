"""The hierarchical bootstrap, the sign-flip permutation test and Holm's adjustment on hand-made unit tables with
known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from oodml.report import stats as st


def _table(cells: dict[tuple[str, int, int], list[float]],
           weights: dict[tuple[str, int, int], list[float]] | None = None) -> pd.DataFrame:
    rows = []
    for (m, lv, s), vals in cells.items():
        w = (weights or {}).get((m, lv, s), [1.0] * len(vals))
        rows += [(m, lv, s, f"u{i}", v, wi) for i, (v, wi) in enumerate(zip(vals, w))]
    return pd.DataFrame(rows, columns=["method", "split_level", "seed", "unit", "value", "weight"])


def test_all_units_equal_give_a_zero_width_interval() -> None:
    cells = {("m", lv, s): [0.7] * 10 for lv in (1, 2, 3) for s in range(3)}
    grid = st.unit_grid(_table(cells))
    reps = st.bootstrap_levels(grid, 500)
    lo, hi = st.percentile_interval(reps)
    assert lo == pytest.approx(np.full((1, 3), 0.7)) and hi == pytest.approx(np.full((1, 3), 0.7))
    assert np.ptp(reps) == pytest.approx(0.0, abs=1e-12)


def _exact_distribution(seed_units: list[list[float]]) -> list[float]:
    """Every equally likely outcome of the two-stage resample: draw len(seeds) seeds with replacement, then within
    each drawn seed as many units with replacement; the statistic is the mean over drawn seeds of the unit means."""
    n_s = len(seed_units)
    out = []
    for seeds in itertools.product(range(n_s), repeat=n_s):
        per_seed = [[float(np.mean(d)) for d in itertools.product(seed_units[s], repeat=len(seed_units[s]))]
                    for s in seeds]
        out += [float(np.mean(combo)) for combo in itertools.product(*per_seed)]
    return out


def test_small_table_matches_the_enumerated_percentiles() -> None:
    """2 seeds x 2 units: all 4 x 4 x 4 = 64 resamples enumerated; their 2.5% and 97.5% percentiles (inverted CDF)
    are the interval, since the bootstrap's replicates land on the same discrete values."""
    seed_units = [[0.0, 0.4], [0.6, 1.0]]
    cells = {("m", 1, s): u for s, u in enumerate(seed_units)}
    dist = np.sort(_exact_distribution(seed_units))
    assert len(dist) == 64
    n = len(dist)
    exact_lo, exact_hi = dist[math.ceil(0.025 * n) - 1], dist[math.ceil(0.975 * n) - 1]
    # the exact CDF is flat around 2.5% and 97.5% (steps at least 1.5 points away), so 2,000 Monte Carlo
    # replicates cannot fall on another value
    below_lo, upto_lo = np.mean(dist < exact_lo), np.mean(dist <= exact_lo)
    assert below_lo <= 0.025 - 0.009 and upto_lo >= 0.025 + 0.015
    below_hi, upto_hi = np.mean(dist < exact_hi), np.mean(dist <= exact_hi)
    assert below_hi <= 0.975 - 0.015 and upto_hi >= 0.975 + 0.009
    grid = st.unit_grid(_table(cells))
    reps = st.bootstrap_levels(grid, 2000)
    lo, hi = st.percentile_interval(reps)
    assert float(lo[0, 0]) == pytest.approx(exact_lo) and float(hi[0, 0]) == pytest.approx(exact_hi)
    assert set(np.round(reps.ravel(), 12)) <= set(np.round(dist, 12))  # every replicate is a possible resample
    assert float(np.mean(reps)) == pytest.approx(float(np.mean(dist)), abs=0.01)


def test_class_units_are_weighted_by_their_query_counts() -> None:
    cells = {("m", 1, 0): [1.0, 0.0, 0.5]}
    weights = {("m", 1, 0): [3.0, 1.0, 4.0]}
    grid = st.unit_grid(_table(cells, weights))
    assert st.level_means(grid)[0, 0] == pytest.approx((3 * 1.0 + 0 + 4 * 0.5) / 8)


def test_seeds_are_drawn_once_for_all_levels_and_series() -> None:
    """Two series with the same units see the same resamples: their replicates are identical."""
    rng = np.random.default_rng(3)
    vals = {(lv, s): list(rng.uniform(size=6)) for lv in (1, 2) for s in range(4)}
    cells = {(m, lv, s): v for m in ("a", "b") for (lv, s), v in vals.items()}
    reps = st.bootstrap_levels(st.unit_grid(_table(cells)), 300)
    assert np.array_equal(reps[0], reps[1])
    again = st.bootstrap_levels(st.unit_grid(_table(cells)), 300)
    assert np.array_equal(reps, again)  # fixed seed


def _enumerated_p(terms: np.ndarray) -> float:
    t_obs = abs(terms.sum())
    flips = np.array(list(itertools.product((1.0, -1.0), repeat=len(terms))))
    t = np.abs(flips @ terms)
    return float(np.mean(t >= t_obs - 1e-12))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sign_flip_p_is_exact_for_small_tables(seed: int) -> None:
    terms = np.random.default_rng(seed).normal(0.3, 1.0, size=9)
    p = st.sign_flip_p(terms[None, :], n_resamples=2000)
    assert p[0] == pytest.approx(_enumerated_p(terms))


def test_sign_flip_p_all_positive_and_zero() -> None:
    terms = np.full(8, 0.1)
    assert st.sign_flip_p(terms[None, :])[0] == pytest.approx(2 / 2**8)  # only all-plus and all-minus are as extreme
    assert st.sign_flip_p(np.zeros((1, 40)))[0] == 1.0
    big = st.sign_flip_p(np.full((1, 40), 0.1), n_resamples=999)  # Monte Carlo: (1 + 0) / (1 + 999)
    assert big[0] == pytest.approx(1 / 1000)


def test_flip_coefficients_reproduce_the_level_and_overall_means() -> None:
    rng = np.random.default_rng(5)
    cells = {("m", lv, s): list(rng.uniform(size=4)) for lv in (1, 2, 3) for s in range(2)}
    cells[("m", 3, 2)] = [0.5, 0.5]  # a level with an extra seed holding fewer units
    grid = st.unit_grid(_table(cells))
    per_level = (st.flip_coefficients(grid, False) * grid.values).sum(axis=(2, 3))
    assert per_level == pytest.approx(st.level_means(grid))
    overall = (st.flip_coefficients(grid, True) * grid.values).sum()
    assert overall == pytest.approx(st.level_means(grid).mean())


def test_holm_by_hand() -> None:
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 with m = 4: 0.04, 0.09, max(0.09, 0.08) = 0.09, max(0.09, 0.5) = 0.5
    assert st.holm(p) == pytest.approx(np.array([0.04, 0.09, np.nan, 0.09, 0.5]), nan_ok=True)
