"""Uncertainty of the report's numbers (issue 17): a hierarchical percentile bootstrap over seeds and units
(k-shot episodes or zero-shot test classes), a paired sign-flip permutation test, and Holm's adjustment.

Everything works on a `UnitGrid`: per-unit values of several series (methods, or paired differences of two
methods) laid out on one (series x level x seed x unit) array. A level's value is the mean over seeds of each
seed's weighted unit mean (weights: a class's query count, 1 for an episode), which is exactly how the stored
aggregates were formed; the value over levels is the mean of the level values (or the area under them).

The bootstrap resamples seeds with replacement (one draw shared by all levels: a seed is one source fit per level),
then units with replacement within each (level, seed) — the two-stage resampling of clustered data. The draws come
from a fixed seed and depend only on the grid's shape, so every series of a grid sees the same resamples and the
same store gives identical intervals. Intervals are percentile intervals of the replicates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: The default number of bootstrap replicates (and of Monte Carlo sign flips): `oodml report --bootstrap`.
DEFAULT_BOOTSTRAP = 2000
#: The fixed seed of every resampling draw.
BOOTSTRAP_SEED = 17
#: Coverage of the intervals, and the level at which a difference counts as resolved.
CONFIDENCE = 0.95
ALPHA = 0.05
#: Bootstrap replicates are drawn in blocks of at most this many (replicate x level x seed x unit) draws.
_BLOCK = 4_000_000


@dataclass(frozen=True)
class UnitGrid:
    """Per-unit values on a dense grid; a unit with weight 0 is absent.

    Attributes:
        series: the series' names (axis 0).
        levels: split levels (axis 1), ascending.
        seeds: seeds (axis 2), ascending.
        values: (series, level, seed, unit) values, 0 where absent.
        weights: same shape, the unit's weight in its (level, seed) mean; 0 where absent.
    """

    series: tuple[str, ...]
    levels: tuple[int, ...]
    seeds: tuple[int, ...]
    values: np.ndarray
    weights: np.ndarray

    @property
    def seed_present(self) -> np.ndarray:
        """(series, level, seed): True where the seed has at least one unit."""
        return self.weights.sum(axis=-1) > 0


def unit_grid(units: pd.DataFrame, *, series: str = "method", unit: str = "unit") -> UnitGrid:
    """Lay out a long unit table on a `UnitGrid`.

    Args:
        units: columns `series`, `split_level`, `seed`, `unit` (an integer code, or any label: sorted as text),
            `value`, `weight` (> 0). Units are matched across series by (level, seed-independent label): the same
            label at the same level is the same unit for every series and seed.
        series: the column naming the series.
        unit: the column naming the unit.

    Returns:
        The grid; units sit at the position of their label in the level's sorted labels.
    """
    names = tuple(sorted(str(s) for s in units[series].unique()))
    levels = tuple(sorted(int(v) for v in units["split_level"].unique()))
    seeds = tuple(sorted(int(v) for v in units["seed"].unique()))
    s_idx = pd.Categorical(units[series].astype(str), categories=names).codes
    l_idx = np.searchsorted(levels, units["split_level"].to_numpy(np.int64))
    d_idx = np.searchsorted(seeds, units["seed"].to_numpy(np.int64))
    labels = units[unit]  # integer codes (`intervals.unit_frame`) keep their order; other labels sort as text
    code, uniques = pd.factorize(labels.to_numpy() if pd.api.types.is_integer_dtype(labels) else labels.astype(str),
                                 sort=True)
    keys, inverse = np.unique(l_idx * max(len(uniques), 1) + code, return_inverse=True)
    key_level = keys // max(len(uniques), 1)
    position = np.arange(len(keys)) - np.searchsorted(key_level, key_level, side="left")  # rank within its level
    u_idx = position[inverse].astype(np.int64)
    n_units = int(u_idx.max()) + 1 if len(units) else 0
    shape = (len(names), len(levels), len(seeds), n_units)
    w = units["weight"].to_numpy(float)
    wv = np.zeros(shape)
    weights = np.zeros(shape)
    np.add.at(wv, (s_idx, l_idx, d_idx, u_idx), w * units["value"].to_numpy(float))
    np.add.at(weights, (s_idx, l_idx, d_idx, u_idx), w)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(weights > 0, wv / weights, 0.0)
    return UnitGrid(names, levels, seeds, values, weights)


def _seed_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., seed, unit) -> (..., seed): weighted unit means, NaN where a seed has no unit."""
    total = weights.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * values).sum(axis=-1) / total, np.nan)


def level_means(grid: UnitGrid) -> np.ndarray:
    """(series, level): the mean over seeds of each seed's weighted unit mean; NaN where a level has no unit."""
    per_seed = _seed_means(grid.values, grid.weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN levels stay NaN
        return np.nanmean(per_seed, axis=-1)


def bootstrap_levels(grid: UnitGrid, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Hierarchical bootstrap replicates of every level value.

    Each replicate draws len(seeds) seed slots with replacement (shared by all levels and series: a seed is one
    source fit per level), then, for each level and slot, as many units with replacement as the slot's seed has
    there (shared by all series; a seed drawn twice gets two independent unit draws); the replicate of a level
    value is the mean over the slots of their weighted means over the drawn units. A slot whose seed a series lacks
    at a level is left out of that series' mean.

    Args:
        grid: the per-unit values.
        n_boot: replicates.
        seed: seed of the draws (fixed, so equal stores give equal replicates).

    Returns:
        (series, level, n_boot) replicates; NaN where a replicate drew no seed the series has at that level.
    """
    n_ser, n_lev, n_seed, n_unit = grid.values.shape
    out = np.full((n_ser, n_lev, n_boot), np.nan)
    if n_boot <= 0 or min(n_ser, n_lev, n_seed, n_unit) == 0:
        return out
    rng = np.random.default_rng(seed)
    any_unit = grid.weights.sum(axis=0) > 0  # (level, seed, unit): drawable units
    n_draw = any_unit.sum(axis=-1)  # (level, seed)
    # the drawable units' positions first, so that a draw r < n_draw maps to a drawable unit
    order = np.argsort(~any_unit, axis=-1, kind="stable")
    wv = np.moveaxis(grid.weights * grid.values, 0, -1)  # (level, seed, unit, series)
    ww = np.moveaxis(grid.weights, 0, -1)
    present = grid.seed_present  # (series, level, seed)
    block = max(1, _BLOCK // max(1, n_lev * n_seed * max(n_unit, n_ser)))
    slots = n_lev * n_seed * n_unit
    base = (np.arange(n_lev * n_seed) * n_unit).reshape(n_lev, n_seed)
    units = np.arange(n_unit)
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        pick = rng.integers(0, n_seed, size=(b, n_seed))  # (b, slot) -> seed
        n_slot = np.moveaxis(n_draw[:, pick], 0, 1)  # (b, level, slot)
        r = (rng.random((b, n_lev, n_seed, n_unit)) * n_slot[..., None]).astype(np.int64)
        order_slot = np.moveaxis(order[:, pick], 0, 1)  # (b, level, slot, unit)
        pos = np.take_along_axis(order_slot, np.minimum(r, n_unit - 1), axis=-1)
        valid = units[None, None, None, :] < n_slot[..., None]
        flat = (np.arange(b)[:, None, None, None] * slots + base[None, :, :, None] + pos)[valid]
        counts = np.bincount(flat, minlength=b * slots).reshape(b, n_lev, n_seed * n_unit).astype(float)
        # one matmul per seed over every (replicate, slot) row that drew it: (level, rows, unit) @ (level, unit, series)
        rows = np.moveaxis(counts.reshape(b, n_lev, n_seed, n_unit), 1, 0).reshape(n_lev, b * n_seed, n_unit)
        seed_of_row = pick.ravel()
        num = np.zeros((n_lev, b * n_seed, n_ser))
        den = np.zeros((n_lev, b * n_seed, n_ser))
        for s in np.unique(seed_of_row):
            at = np.flatnonzero(seed_of_row == s)
            num[:, at] = np.matmul(rows[:, at], wv[:, s])
            den[:, at] = np.matmul(rows[:, at], ww[:, s])
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = (num / den).reshape(n_lev, b, n_seed, n_ser)
        pres = np.moveaxis(present[:, :, pick], 0, -1)  # (level, b, slot, series)
        with np.errstate(invalid="ignore", divide="ignore"):
            rep = np.where(pres, stat, 0.0).sum(axis=2) / pres.sum(axis=2)  # (level, b, series)
        out[:, :, start:start + b] = np.moveaxis(rep, (0, 1, 2), (1, 2, 0))
    return out


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval along the last axis (NaN replicates left out; NaN where none is finite)."""
    reps = np.asarray(replicates, float)
    tail = 100 * (1 - confidence) / 2
    finite = np.isfinite(reps).any(axis=-1)
    lo = np.full(reps.shape[:-1], np.nan)
    hi = np.full(reps.shape[:-1], np.nan)
    if finite.any():
        q = np.nanpercentile(reps[finite], [tail, 100 - tail], axis=-1)
        lo[finite], hi[finite] = q[0], q[1]
    return lo, hi


def flip_coefficients(grid: UnitGrid, over_levels: bool) -> np.ndarray:
    """(series, level, seed, unit): each unit's coefficient in the level value (or, with `over_levels`, in the mean
    over the series' levels), so that a value = sum(coefficient * unit value)."""
    total = grid.weights.sum(axis=-1, keepdims=True)
    n_seeds = grid.seed_present.sum(axis=-1)[..., None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        coef = np.where(grid.weights > 0, grid.weights / total / n_seeds, 0.0)
    if over_levels:
        n_levels = (grid.seed_present.any(axis=-1)).sum(axis=-1)[:, None, None, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            coef = np.where(n_levels > 0, coef / n_levels, 0.0)
    return coef


def sign_flip_p(terms: np.ndarray, n_resamples: int = DEFAULT_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Two-sided paired sign-flip permutation p-values of statistics that are sums of per-unit terms.

    Under the null hypothesis the two methods of a pair are exchangeable on every unit, so each unit's term
    (coefficient x paired difference) keeps or flips its sign with probability 1/2. With n units that are nonzero
    for some series, all 2^n sign patterns are enumerated when 2^n <= `n_resamples` (p = the share of patterns
    whose |sum| is at least the observed |sum|), else `n_resamples` random patterns with a fixed seed, shared by
    the series (p = (1 + patterns at least as extreme) / (1 + n_resamples)). One matrix product per block of
    patterns (scipy.stats.permutation_test gives the same p-values, but took 15 s for one 14-method leaderboard).

    Args:
        terms: (series, n) per-unit terms; the statistic of a series is their sum (zero terms do not matter).
        n_resamples: Monte Carlo sign patterns (also the bound for exact enumeration).
        seed: seed of the Monte Carlo patterns.

    Returns:
        (series,) p-values; 1 where every term is 0; NaN for a series without terms or when n_resamples <= 0.
    """
    terms = np.atleast_2d(np.asarray(terms, float))
    out = np.full(terms.shape[0], np.nan)
    if n_resamples <= 0 or terms.shape[1] == 0:
        return out
    keep = (terms != 0).any(axis=0)  # units that are zero for every series cannot change any statistic
    x = terms[:, keep].T  # (n, series)
    n = x.shape[0]
    observed = np.abs(x.sum(axis=0))
    tol = 1e-9 * np.maximum(np.abs(x).sum(axis=0), 1e-300)  # sums equal up to rounding count as equal
    exact = n <= 30 and 2 ** n <= n_resamples
    total = 2 ** n if exact else n_resamples
    extreme = np.zeros(terms.shape[0])
    rng = np.random.default_rng(seed)
    per_block = max(1, 2_000_000 // max(1, n))
    for start in range(0, total, per_block):
        m = min(per_block, total - start)
        if exact:
            codes = np.arange(start, start + m)[:, None] >> np.arange(n)[None, :]
            signs = 1.0 - 2.0 * (codes & 1)
        else:
            signs = 1.0 - 2.0 * rng.integers(0, 2, size=(m, n))
        extreme += (np.abs(signs @ x) >= observed - tol).sum(axis=0)
    out[:] = extreme / total if exact else (1.0 + extreme) / (1.0 + total)
    out[observed <= tol] = 1.0
    return np.minimum(out, 1.0)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error); NaN entries are left out and stay NaN."""
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out
