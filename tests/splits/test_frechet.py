"""Fréchet distance: exact identities, the 1-D closed form, rank deficiency and agreement with scipy's sqrtm."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from oodml.errors import OodmlError
from oodml.splits.frechet import frechet_distance, moments_from_sums, moments_of, frechet_from_moments


def sqrtm_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with a full D x D matrix square root (no eps)."""
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = scipy.linalg.sqrtm(ca @ cb)
    return float((ma - mb) @ (ma - mb) + np.trace(ca) + np.trace(cb) - 2 * np.trace(root).real)


def _pair(na: int, nb: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return g.normal(size=(na, d)), g.normal(0.5, 1.3, size=(nb, d)) @ g.normal(size=(d, d)) / np.sqrt(d)


def test_identical_sets_give_exactly_zero() -> None:
    a, _ = _pair(30, 2, 12)
    assert frechet_distance(a, a.copy()) == 0.0
    assert frechet_distance(a, a[::-1]) == 0.0  # same set, other row order
    big, _ = _pair(50, 2, 4)
    assert frechet_distance(big, big[np.random.default_rng(1).permutation(50)]) == 0.0


@pytest.mark.parametrize("na,nb,d", [(20, 25, 40), (60, 80, 10), (8, 300, 20), (300, 8, 20)])
def test_symmetric_exactly(na: int, nb: int, d: int) -> None:
    a, b = _pair(na, nb, d)
    assert frechet_distance(a, b) == frechet_distance(b, a)


def test_one_dimensional_closed_form() -> None:
    g = np.random.default_rng(3)
    a, b = g.normal(2.0, 1.5, size=(40, 1)), g.normal(-1.0, 0.5, size=(70, 1))
    m1, m2 = a.mean(), b.mean()
    s1, s2 = a.std(ddof=1), b.std(ddof=1)
    assert frechet_distance(a, b) == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-12)


@pytest.mark.parametrize("na,nb,d", [(50, 60, 8), (200, 300, 20), (40, 40, 40), (120, 33, 30), (5, 7, 3)])
def test_agrees_with_sqrtm_on_well_conditioned_inputs(na: int, nb: int, d: int) -> None:
    a, b = _pair(na, nb, d, seed=na + nb)
    assert frechet_distance(a, b) == pytest.approx(sqrtm_fid(a, b), rel=1e-8)


def test_nuclear_norm_route_agrees_with_sqrtm_when_classes_below_dim() -> None:
    # both sides have fewer classes than dimensions: singular covariances, the nuclear-norm route is used
    a, b = _pair(12, 15, 16, seed=7)
    assert frechet_distance(a, b) == pytest.approx(sqrtm_fid(a, b), rel=1e-6)


def test_rank_deficient_covariances_stay_finite_and_nonnegative() -> None:
    g = np.random.default_rng(5)
    low = g.normal(size=(200, 2)) @ g.normal(size=(2, 30))  # rank 2 in 30-d, more classes than dims
    also_low = g.normal(size=(150, 3)) @ g.normal(size=(3, 30))
    value = frechet_distance(low, also_low)
    assert np.isfinite(value) and value >= 0
    assert value == pytest.approx(sqrtm_fid(low, also_low), rel=1e-5, abs=1e-6)
    # duplicated rows: covariance of rank 1
    dup = np.repeat(g.normal(size=(2, 30)), 10, axis=0)
    assert np.isfinite(frechet_distance(dup, low))


def test_translation_invariance_and_shift() -> None:
    a, b = _pair(30, 40, 6)
    shift = np.full(6, 2.0)
    base = frechet_distance(a, b)
    assert frechet_distance(a + 5, b + 5) == pytest.approx(base, rel=1e-10)
    # moving b by a constant vector adds exactly the change in the squared mean difference
    d0, d1 = a.mean(0) - b.mean(0), a.mean(0) - b.mean(0) - shift
    assert frechet_distance(a, b + shift) == pytest.approx(base - d0 @ d0 + d1 @ d1, rel=1e-10)


def test_moments_from_running_sums_match_direct_moments() -> None:
    a, b = _pair(90, 70, 10)
    direct = frechet_from_moments(moments_of(a), moments_of(b))
    from_sums = frechet_from_moments(moments_from_sums(len(a), a.sum(0), a.T @ a),
                                     moments_from_sums(len(b), b.sum(0), b.T @ b))
    assert from_sums == pytest.approx(direct, rel=1e-10)


def test_bad_inputs_are_user_errors() -> None:
    a, b = _pair(10, 10, 4)
    with pytest.raises(OodmlError, match="different dimensions"):
        frechet_distance(a, b[:, :3])
    with pytest.raises(OodmlError, match="at least 2"):
        frechet_distance(a[:1], b)
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(OodmlError, match="NaN"):
        frechet_distance(bad, b)


def test_rank_deficient_side_has_no_rounding_noise_from_zero_eigenvalues() -> None:
    # a: 6 class means in 40-d (factor form, rank 5); b: a's rows 9 times over, shifted by c (54 rows > 40 dims:
    # covariance form). Then Σ_b = 9·(n_a − 1)/(n_b − 1) Σ_a = s Σ_a with s = 45/53, and
    # FID = ‖c‖² + Tr Σ_a (1 − √s)². The eigenproblem behind Tr (Σ_a Σ_b)^½ is 6 × 6 of rank 5: its zero eigenvalue
    # comes out at ±1e-16 max λ, whose square root (1e-8) used to land in the 8th digit of the FID.
    g = np.random.default_rng(4)  # seeds 2-5 put the zero eigenvalue above 0 (the old error: 3e-7 to 8e-7 relative)
    a = g.normal(size=(6, 40)) * np.linspace(0.5, 3.0, 40)
    c = g.normal(size=40) * 0.1
    b = np.tile(a, (9, 1)) + c
    s = 9 * 5 / 53
    tr_a = float(np.trace(np.cov(a, rowvar=False)))
    expected = float(c @ c) + tr_a * (1 - np.sqrt(s)) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_value_does_not_depend_on_the_blas_thread_count() -> None:
    # the split file's bytes must not change with OMP_NUM_THREADS: the FID runs BLAS on one thread whatever the limit
    from threadpoolctl import threadpool_limits

    g = np.random.default_rng(3)  # without the one-thread pin: 1229.93634465977 (1 thread) vs ...46018 (2 threads)
    big = g.normal(size=(2000, 300)) @ g.normal(size=(300, 300)) / 10
    small = g.normal(size=(40, 300)) @ g.normal(size=(300, 300)) / 10 + 0.3
    values = set()
    for threads in (1, 2, 4):
        with threadpool_limits(limits=threads, user_api="blas"):
            values.add(frechet_distance(big, small))
    assert len(values) == 1
