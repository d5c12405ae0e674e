"""Seed-level inference (`oodml.report.stats`): hand-computed t intervals and p-values, missing seeds, one and two
seeds, the sign-flip test over seeds, Holm, the area as a contrast, and the planner's arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oodml.report import stats as st

# t quantile 0.975 at 2 degrees of freedom, and the two-sided p of t = 2 sqrt(3) at 2 df, from tables:
# t_{2, 0.975} = 4.302653; P(|T_2| > 3.4641) = 1 - 3.4641 / sqrt(2 + 3.4641^2) = 1 - 3.4641 / 3.7417 = 0.074180
T2 = 4.302653
P_2SQRT3 = 1 - 2 * math.sqrt(3) / math.sqrt(2 + 12)


def test_t_interval_on_three_seeds_by_hand() -> None:
    e = st.contrast(np.array([[0.1, 0.2, 0.3]]), np.ones(1))  # one component, three seeds
    # mean 0.2, sd 0.1, se 0.1 / sqrt(3)
    se = 0.1 / math.sqrt(3)
    assert float(e.estimate) == pytest.approx(0.2)
    assert float(e.se) == pytest.approx(se)
    assert float(e.df) == 2 and int(e.n_seeds) == 3
    assert float(e.low) == pytest.approx(0.2 - T2 * se, abs=1e-6)
    assert float(e.high) == pytest.approx(0.2 + T2 * se, abs=1e-6)
    assert float(e.p) == pytest.approx(P_2SQRT3, abs=1e-6)  # t = 0.2 / se = 2 sqrt(3)


def test_the_interval_excludes_zero_exactly_when_p_is_below_alpha() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(0.3, 1.0, size=(200, 1, 4))
    e = st.contrast(y, np.ones(1))
    assert ((e.p < st.ALPHA) == ((e.low > 0) | (e.high < 0))).all()


def test_balanced_contrast_is_the_t_interval_on_per_seed_contrasts() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(5, 4))  # 5 levels x 4 seeds
    c = np.array([0.1, 0.3, 0.2, 0.25, 0.15])
    z = c @ y  # each seed's contrast
    e = st.contrast(y, c)
    half = float(st.t_quantile(3)) * z.std(ddof=1) / 2
    assert float(e.estimate) == pytest.approx(z.mean())
    assert (float(e.low), float(e.high)) == pytest.approx((z.mean() - half, z.mean() + half))


def test_missing_seeds_by_hand() -> None:
    # level 1: seeds 0, 1, 2 = 1, 2, 3; level 2: seeds 0, 1 = 2, 4 (seed 2 missing); mean over the two levels
    y = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, np.nan]])
    e = st.contrast(y, np.array([0.5, 0.5]))
    # var 1 = 1 (3 seeds), var 2 = 2 (2 seeds), covariance on the shared seeds 0, 1: ((-.5)(-1) + (.5)(1)) / 1 = 1
    var = 0.25 * 1 / 3 + 0.25 * 2 / 2 + 2 * 0.25 * 1 * 2 / (3 * 2)
    assert float(e.estimate) == pytest.approx(2.5)
    assert float(e.se) == pytest.approx(math.sqrt(var))
    # Satterthwaite over the two variance terms 1/12 and 1/4 (2 and 1 df): (1/3)^2 / ((1/12)^2 / 2 + (1/4)^2 / 1)
    assert int(e.n_seeds) == 3 and float(e.df) == pytest.approx((1 / 3) ** 2 / ((1 / 12) ** 2 / 2 + (1 / 4) ** 2))


def test_one_seed_has_no_interval_and_says_why() -> None:
    e = st.contrast(np.array([[0.4]]), np.ones(1), flip=True)
    assert float(e.estimate) == pytest.approx(0.4)
    assert np.isnan(e.low) and np.isnan(e.high) and np.isnan(e.p) and np.isnan(e.p_flip)
    assert st.seed_note(1) == "1 seed: training variance not estimated"


def test_two_seeds_say_how_wide_t1_is() -> None:
    e = st.contrast(np.array([[0.1, 0.3]]), np.ones(1))
    assert float(e.high - e.low) == pytest.approx(2 * 12.706205 * 0.1, rel=1e-6)  # se = sd / sqrt(2) = 0.1
    assert "12.7" in st.seed_note(2) and st.seed_note(3) == ""


def test_identical_seeds_give_a_point_interval() -> None:
    e = st.contrast(np.array([[[0.5, 0.5, 0.5]], [[0.0, 0.0, 0.0]]]), np.ones(1))  # two series, one component
    assert e.low.tolist() == pytest.approx(e.high.tolist())
    assert e.p.tolist() == [0.0, 1.0]


def test_a_component_without_seeds_gives_no_estimate() -> None:
    y = np.array([[0.1, 0.2], [np.nan, np.nan]])
    assert np.isnan(st.contrast(y, np.array([0.5, 0.5])).estimate)
    assert float(st.contrast(y, np.array([1.0, 0.0])).estimate) == pytest.approx(0.15)


def test_sign_flip_over_seeds_is_exact() -> None:
    p = st.sign_flip_p(np.array([[1.0, 2, 3, 4, 5, 6, 7]]))
    assert p[0] == pytest.approx(2 / 128)  # only all-plus and all-minus are as extreme
    p = st.sign_flip_p(np.array([[1.0, -1.0, 2.0]]))  # |sum| = 2; patterns with |sum| >= 2: 6 of 8
    assert p[0] == pytest.approx(6 / 8)
    assert st.sign_flip_p(np.zeros((1, 5)))[0] == 1.0


def test_sign_flip_is_given_from_seven_seeds_on() -> None:
    y = np.arange(1.0, 8.0)[None, :]  # one component, seven seeds
    assert float(st.contrast(y, np.ones(1), flip=True).p_flip) == pytest.approx(2 / 128)
    assert np.isnan(st.contrast(y[..., :6], np.ones(1), flip=True).p_flip)


def test_holm_by_hand() -> None:
    p = np.array([0.01, 0.04, 0.03, np.nan])
    assert st.holm(p)[:3].tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(st.holm(p)[3])


def test_area_weights_are_the_trapezoid_over_the_fid_range() -> None:
    fids = np.array([10.0, 30.0, 20.0])
    w = st.area_weights(fids)
    y = np.array([0.9, 0.5, 0.7])
    trapezoid = ((0.9 + 0.7) / 2 * 10 + (0.7 + 0.5) / 2 * 10) / 20
    assert float(w @ y) == pytest.approx(trapezoid)
    assert st.area_under_curve(fids, y[None, :])[0] == pytest.approx(trapezoid)
    assert st.area_under_curve(fids, np.array([[0.9, np.nan, 0.7]]))[0] == pytest.approx(0.8)


def test_power_and_seeds_needed_known_answer() -> None:
    # one-sample t test, effect size 1, two-sided 0.05: n = 10 gives power 0.803 (standard power tables)
    assert st.power(1.0, 1.0, 0.0, 10) == pytest.approx(0.8031, abs=5e-4)
    assert st.seeds_needed(1.0, 1.0, 0.0) == 10
    assert st.seeds_needed(1.0, 0.5, 0.5) == 10  # only the sum of the components matters for a fixed unit count
    assert st.seeds_needed(0.0, 1.0, 0.0) is None


def test_expected_half_width() -> None:
    # c4(2) = sqrt(2 / pi); t(1) = 12.7062
    assert st.expected_half_width(1.0, 0.0, 2) == pytest.approx(12.7062 * math.sqrt(2 / math.pi) / math.sqrt(2),
                                                                rel=1e-4)
    assert np.isnan(st.expected_half_width(1.0, 0.0, 1))


def test_within_seed_variance_is_the_seed_by_unit_interaction() -> None:
    # a unit effect shared by every seed and a seed effect add nothing; only the interaction counts
    unit = np.array([0.0, 0.5, -0.3, 0.2])
    seed = np.array([0.1, -0.2, 0.05])
    inter = np.array([[0.01, -0.02, 0.03, -0.02], [-0.01, 0.0, 0.02, -0.01], [0.0, 0.02, -0.05, 0.03]])
    x = seed[:, None] + unit[None, :] + inter
    grid = st.UnitGrid(("a",), (1,), (0, 1, 2), x[None, None], np.ones((1, 1, 3, 4)))
    r = inter - inter.mean(1, keepdims=True) - inter.mean(0, keepdims=True) + inter.mean()
    assert st.within_seed_variance(grid)[0, 0] == pytest.approx((r ** 2).sum() / (2 * 3) / 4)
    shared = st.UnitGrid(("a",), (1,), (0, 1, 2), (seed[:, None] + unit[None, :])[None, None], np.ones((1, 1, 3, 4)))
    assert st.within_seed_variance(shared)[0, 0] == pytest.approx(0.0, abs=1e-15)
