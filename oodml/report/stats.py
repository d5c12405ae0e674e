"""Uncertainty of the report's numbers: seed-level t intervals, paired tests over seeds, Holm's adjustment, and the
arithmetic of planning a study (how many seeds a difference needs).

The replication unit of a DML result is the training run, a *seed*: one source fit per seed and level, with the
split's episodes (k > 0) or test classes (k = 0) evaluated inside it. Every number the report prints is a linear
contrast of level values, theta = sum_j c_j mu_j, where mu_j is the mean over seeds of component j (a (series,
level) pair: a method's value at a level, or a paired difference there): the value at a level (c = 1), the mean over
levels (c = 1/L), the area under the curve (trapezoid weights), a gain or a change between levels (+1/-1). Its
estimate is sum_j c_j ybar_j over each component's seeds.

The interval treats the seeds as independent replications: with every seed at every component it is exactly the t
interval on the per-seed contrasts z_s = sum_j c_j y_js (n - 1 degrees of freedom). Where some seed lacks some
component (a failed or missing cell), the variance is the sum over component pairs of c_j c_k cov_jk n_jk /
(n_j n_k), each covariance estimated on the seeds the two components share, with Welch-Satterthwaite degrees of
freedom capped at the seeds' count minus 1 and at the fewest seeds of a component. The episodes or classes nested in a seed need no model
of their own: their noise is part of each seed's value. `benchmarks/coverage.py` simulates data with known truth
(seed effects, unit noise, unbalanced units, missing seeds) and prints the coverage of these intervals and the
null rejection rate of the tests: docs/results.md holds its table.

The paired test is the t test of the same contrast (p < 0.05 exactly when the 95% interval excludes 0). From
`SIGN_FLIP_MIN_SEEDS` seeds on, the exact sign-flip permutation test over seeds (each seed's contribution keeps or
flips its sign) is given beside it, a check that needs no normality. Nothing is resampled at random below
`EXACT_FLIP_MAX_SEEDS` seeds, so the same store gives the same numbers whatever any random seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

#: Monte Carlo sign patterns of the seed-level permutation test beyond `EXACT_FLIP_MAX_SEEDS` seeds
#: (`oodml report --bootstrap`; the name stays for the option's users).
DEFAULT_BOOTSTRAP = 2000
#: The fixed seed of the Monte Carlo sign patterns.
BOOTSTRAP_SEED = 17
#: Coverage of the intervals, and the level at which a difference counts as resolved.
CONFIDENCE = 0.95
ALPHA = 0.05
#: The exact sign-flip test over n seeds reaches p <= 0.05 (two-sided) only from 2 / 2^n <= 0.05 on, and holds its
#: size well (0.047 at n = 7) from here on: below it only the t test is given.
SIGN_FLIP_MIN_SEEDS = 7
#: Up to this many seeds all 2^n sign patterns are enumerated (exact and deterministic); beyond, Monte Carlo.
EXACT_FLIP_MAX_SEEDS = 20
#: Why a value has no interval, by the number of seeds it rests on.
ONE_SEED = "1 seed: training variance not estimated"
NO_SEED = "no seed"


def seed_note(n_seeds: int) -> str:
    """What an interval on `n_seeds` seeds can say: empty for 3 or more, a warning for 2, `ONE_SEED` for 1."""
    if n_seeds <= 0:
        return NO_SEED
    if n_seeds == 1:
        return ONE_SEED
    if n_seeds == 2:
        return (f"2 seeds: t(1) interval, {t_quantile(1):.1f} x its standard error on each side "
                f"(vs {t_quantile(30):.2f} with many seeds)")
    return ""


def t_quantile(df: float | np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """The two-sided t quantile for `confidence` at `df` degrees of freedom (NaN where df < 1)."""
    df = np.asarray(df, float)
    with np.errstate(invalid="ignore"):
        return np.where(df >= 1, sps.t.ppf(0.5 + confidence / 2, np.maximum(df, 1)), np.nan)


@dataclass(frozen=True)
class Estimate:
    """A seed-level estimate of one contrast per series (arrays over the series axis).

    Attributes:
        estimate: the contrast of the level values.
        se: its standard error over seeds (NaN with fewer than 2 seeds).
        df: degrees of freedom (seeds - 1).
        n_seeds: seeds that contribute.
        low: lower end of the 95% t interval.
        high: upper end.
        p: two-sided p-value of the t test of estimate = 0.
        p_flip: exact sign-flip p-value over seeds (NaN below `SIGN_FLIP_MIN_SEEDS` seeds).
    """

    estimate: np.ndarray
    se: np.ndarray
    df: np.ndarray
    n_seeds: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p: np.ndarray
    p_flip: np.ndarray


def contrast(values: np.ndarray, coef: np.ndarray, *, flip: bool = False,
             n_resamples: int = DEFAULT_BOOTSTRAP) -> Estimate:
    """Seed-level estimate, t interval and t test of sum_j coef_j * mean_s values[..., j, s].

    Args:
        values: (..., component, seed) per-seed values; NaN where a seed has no value for the component.
        coef: (component,) or broadcastable to (..., component) coefficients; a component with coefficient 0 may be
            all NaN.
        flip: also compute the sign-flip p-value over seeds (`SIGN_FLIP_MIN_SEEDS` seeds or more).
        n_resamples: Monte Carlo sign patterns beyond `EXACT_FLIP_MAX_SEEDS` seeds.

    Returns:
        One `Estimate` over the leading axes; NaN estimate where a component with a nonzero coefficient has no seed.
    """
    y = np.asarray(values, float)
    c = np.broadcast_to(np.asarray(coef, float), y.shape[:-1])
    present = np.isfinite(y)
    n_j = present.sum(axis=-1)  # (..., component)
    used = c != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ybar = np.where(n_j > 0, np.where(present, y, 0.0).sum(axis=-1) / np.maximum(n_j, 1), np.nan)
        est = np.where(used, c * ybar, 0.0).sum(axis=-1)
        est = np.where((used & (n_j == 0)).any(axis=-1), np.nan, est)
        w = np.where(used, c / np.maximum(n_j, 1), 0.0)[..., None]  # (..., component, 1)
        u = np.where(present & used[..., None], w * (y - ybar[..., None]), 0.0).sum(axis=-2)  # (..., seed)
        total = np.where(present & used[..., None], w * y, 0.0).sum(axis=-2)  # each seed's contribution to est
    seed_used = (present & used[..., None]).any(axis=-2)  # (..., seed)
    g = seed_used.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(g >= 2, (u ** 2).sum(axis=-1) * g / np.maximum(g - 1, 1), np.nan)
    df = np.where(g >= 2, g - 1, np.nan).astype(float)
    same = ((present == seed_used[..., None, :]) | ~used[..., None]).all(axis=(-2, -1))
    if not bool(np.all(same)):  # some seed lacks some component: the unbalanced form below
        var_u, df_u = _unbalanced_variance(y, c, present, used, n_j, g)
        var, df = np.where(same, var, var_u), np.where(same, df, df_u)
    se = np.sqrt(var)
    q = t_quantile(df)
    est = np.where(g >= 1, est, np.nan)
    low, high = est - q * se, est + q * se
    with np.errstate(invalid="ignore", divide="ignore"):
        tstat = np.abs(est) / se
        p = np.where(np.isfinite(est) & (g >= 2), 2 * sps.t.sf(tstat, np.maximum(df, 1)), np.nan)
    zero_se = np.isfinite(est) & (g >= 2) & (se <= 1e-12 * np.maximum(1.0, np.abs(est)))
    p = np.where(zero_se, np.where(np.abs(est) <= 1e-12, 1.0, 0.0), p)  # seeds that agree exactly
    p_flip = np.full(est.shape, np.nan)
    if flip:
        flat_t = np.where(seed_used, total, 0.0).reshape(-1, y.shape[-1])
        flat_g = g.reshape(-1)
        out = p_flip.reshape(-1)
        for i in np.flatnonzero(flat_g >= SIGN_FLIP_MIN_SEEDS):
            out[i] = sign_flip_p(flat_t[i][None, :], n_resamples)[0]
        p_flip = out.reshape(est.shape)
    return Estimate(est, se, df, g, low, high, p, p_flip)


def _unbalanced_variance(y: np.ndarray, c: np.ndarray, present: np.ndarray, used: np.ndarray, n_j: np.ndarray,
                         n_seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance of sum_j c_j ybar_j when components have different seeds: sum over component pairs of
    c_j c_k cov_jk n_jk / (n_j n_k), each covariance estimated (ddof 1) on the seeds the two share (0 when they
    share fewer than 2), which is unbiased term by term and equals the t interval's variance when every component
    has every seed. Degrees of freedom: Welch-Satterthwaite's over the components' own variance terms, at most the
    number of distinct seeds minus 1 (what the balanced t interval would have) and at most the fewest seeds of a
    used component (`benchmarks/coverage.py`: without this bound the missing-seed design covered 0.926 at 5 seeds).
    NaN where a used component has fewer than 2 seeds.
    """
    n_comp = y.shape[-2]
    var = np.zeros(y.shape[:-2])
    diag = np.zeros(y.shape[:-2])  # sum of the diagonal terms, and of their squares over their df (Satterthwaite)
    diag_sq = np.zeros(y.shape[:-2])
    for j in range(n_comp):
        for k in range(j, n_comp):
            cc = c[..., j] * c[..., k] * (1.0 if j == k else 2.0)
            if not np.any(cc):
                continue
            both = present[..., j, :] & present[..., k, :]
            n_jk = both.sum(axis=-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                mj = np.where(both, y[..., j, :], 0.0).sum(axis=-1) / np.maximum(n_jk, 1)
                mk = np.where(both, y[..., k, :], 0.0).sum(axis=-1) / np.maximum(n_jk, 1)
                cov = np.where(both, (y[..., j, :] - mj[..., None]) * (y[..., k, :] - mk[..., None]), 0.0)
                cov = cov.sum(axis=-1) / np.maximum(n_jk - 1, 1)
                term = np.where(n_jk >= 2, cc * cov * n_jk / (np.maximum(n_j[..., j], 1) * np.maximum(n_j[..., k], 1)),
                                0.0)
            var = var + np.where(cc != 0, term, 0.0)
            if j == k:
                diag = diag + np.where(cc != 0, term, 0.0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    diag_sq = diag_sq + np.where((cc != 0) & (n_jk >= 2), term ** 2 / np.maximum(n_jk - 1, 1), 0.0)
    n_min = np.where(used, n_j, np.iinfo(np.int64).max).min(axis=-1)
    ok = n_min >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        satterthwaite = np.where(diag_sq > 0, diag ** 2 / diag_sq, np.inf)
    df = np.minimum(np.minimum(satterthwaite, n_seeds - 1), n_min)
    var = np.where(var > 0, var, diag)  # covariances on few shared seeds can outweigh: then the diagonal alone
    return np.where(ok, var, np.nan), np.where(ok, np.maximum(df, 1.0), np.nan).astype(float)


def sign_flip_p(terms: np.ndarray, n_resamples: int = DEFAULT_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Two-sided sign-flip permutation p-values of statistics that are sums of independent terms (one per seed).

    Under the null hypothesis each seed's term is symmetric about 0, so it keeps or flips its sign with probability
    1/2. With n nonzero terms all 2^n patterns are enumerated when n <= `EXACT_FLIP_MAX_SEEDS` (p = the share of
    patterns whose |sum| is at least the observed one), else `n_resamples` random patterns with a fixed seed
    (p = (1 + patterns at least as extreme) / (1 + n_resamples)).

    Args:
        terms: (series, n) terms; the statistic of a series is their sum (zero terms do not matter).
        n_resamples: Monte Carlo sign patterns beyond exact enumeration.
        seed: seed of the Monte Carlo patterns.

    Returns:
        (series,) p-values; 1 where every term is 0; NaN for a series without terms.
    """
    terms = np.atleast_2d(np.asarray(terms, float))
    out = np.full(terms.shape[0], np.nan)
    if terms.shape[1] == 0:
        return out
    keep = (terms != 0).any(axis=0)
    x = terms[:, keep].T  # (n, series)
    n = x.shape[0]
    observed = np.abs(x.sum(axis=0))
    tol = 1e-9 * np.maximum(np.abs(x).sum(axis=0), 1e-300)  # sums equal up to rounding count as equal
    exact = n <= EXACT_FLIP_MAX_SEEDS
    if not exact and n_resamples <= 0:
        return out
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


def area_weights(fids: np.ndarray) -> np.ndarray:
    """Coefficients a with sum_j a_j y_j = the trapezoid area of y over `fids` divided by the FID range (so the area
    is a contrast of the level values); one level: weight 1; no range: NaN."""
    x = np.asarray(fids, float)
    if len(x) == 1:
        return np.ones(1)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    span = xs[-1] - xs[0]
    if not span > 0:
        return np.full(len(x), np.nan)
    gaps = np.diff(xs)
    w = np.zeros(len(x))
    w[:-1] += gaps / 2
    w[1:] += gaps / 2
    out = np.empty(len(x))
    out[order] = w / span
    return out


def area_under_curve(fids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Trapezoid area of each row of `values` over `fids` divided by the FID range (NaN cells are left out).

    A row with one finite value has that value as its area; a row with none has NaN.
    """
    x = np.asarray(fids, float)
    y = np.atleast_2d(np.asarray(values, float))
    out = np.full(y.shape[0], np.nan)
    for i in range(y.shape[0]):
        keep = np.isfinite(y[i])
        if keep.any():
            w = area_weights(x[keep])
            out[i] = float(w @ y[i, keep]) if np.isfinite(w).all() else np.nan
    return out


# --- per-unit values (the planner's within-seed variance, and the values behind each seed's mean) ---------------


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
            `value`, `weight` (> 0). The same label at the same level is the same unit for every series and seed.
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
    labels = units[unit]
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


def within_seed_variance(grid: UnitGrid) -> np.ndarray:
    """(series, level): the squared standard error a seed's weighted unit mean has from the seed x unit interaction,
    the only unit noise that differs between seeds. The split's units (test classes, episodes) are the same for
    every seed, so a unit's own effect is shared by all seeds and cancels in their spread; the interaction is the
    two-way residual x_su - xbar_s - xbar_u + xbar over the units every seed of the level has (variance with
    (S - 1)(U - 1) degrees of freedom), scaled by sum(w^2) / sum(w)^2 of the units' weights. NaN below 2 seeds or
    2 shared units."""
    out = np.full(grid.values.shape[:2], np.nan)
    for i, j in np.ndindex(*out.shape):
        have = grid.seed_present[i, j]
        w = grid.weights[i, j][have]  # (seed, unit)
        shared = (w > 0).all(axis=0)
        n_s, n_u = int(have.sum()), int(shared.sum())
        if n_s < 2 or n_u < 2:
            continue
        x = grid.values[i, j][have][:, shared]
        r = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
        sigma2 = float((r ** 2).sum()) / ((n_s - 1) * (n_u - 1))
        ww = w[:, shared].mean(axis=0)
        out[i, j] = sigma2 * float((ww ** 2).sum()) / float(ww.sum()) ** 2
    return out


# --- planning -------------------------------------------------------------------------------------------------


def power(delta: float, between: float, within: float, n_seeds: int, *, alpha: float = ALPHA) -> float:
    """Power of the two-sided seed-level t test to resolve a contrast of size `delta`.

    Args:
        delta: the true contrast.
        between: its seed-to-seed variance component (the variance of a seed's contrast beyond its units' noise).
        within: the squared standard error one seed's contrast has from its episodes or classes.
        n_seeds: seeds.
        alpha: two-sided level.

    Returns:
        P(reject) under a noncentral t with n_seeds - 1 degrees of freedom; NaN below 2 seeds.
    """
    if n_seeds < 2:
        return float("nan")
    sd = math.sqrt(max(between + within, 0.0))
    if sd == 0:
        return 1.0 if delta != 0 else alpha
    df = n_seeds - 1
    ncp = abs(delta) / (sd / math.sqrt(n_seeds))
    q = float(sps.t.ppf(1 - alpha / 2, df))
    return float(sps.nct.sf(q, df, ncp) + sps.nct.cdf(-q, df, ncp))


def seeds_needed(delta: float, between: float, within: float, *, target: float = 0.8, alpha: float = ALPHA,
                 most: int = 10_000) -> int | None:
    """The fewest seeds (>= 2) whose t test reaches `target` power for `delta`; None beyond `most`."""
    if not np.isfinite(delta) or delta == 0 or not np.isfinite(between + within):
        return None
    lo, hi = 2, 2
    while power(delta, between, within, hi, alpha=alpha) < target:
        lo, hi = hi, hi * 2
        if hi > most:
            return None
    while lo < hi:  # power grows with the seeds: bisect for the first that reaches the target
        mid = (lo + hi) // 2
        if power(delta, between, within, mid, alpha=alpha) >= target:
            hi = mid
        else:
            lo = mid + 1
    return hi


def expected_half_width(between: float, within: float, n_seeds: int, confidence: float = CONFIDENCE) -> float:
    """The expected half-width of the 95% t interval on `n_seeds` seeds: t quantile x E[s] / sqrt(n), with E[s] =
    c4(n) x sigma (the bias of the sample standard deviation); NaN below 2 seeds."""
    if n_seeds < 2:
        return float("nan")
    sigma = math.sqrt(max(between + within, 0.0))
    c4 = math.exp(math.lgamma(n_seeds / 2) - math.lgamma((n_seeds - 1) / 2)) * math.sqrt(2 / (n_seeds - 1))
    return float(t_quantile(n_seeds - 1, confidence)) * c4 * sigma / math.sqrt(n_seeds)
