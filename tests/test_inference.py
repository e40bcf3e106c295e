"""The verdicts' statistics against the reference implementations (scipy, statsmodels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ttest_ind
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_ind

from prunekit.stats.inference import (
    Group,
    contrast,
    difference,
    holm,
    p_greater,
    p_less,
    p_outside,
    p_within,
    runs_needed,
)

rng = np.random.default_rng(0)
SAMPLES = [(rng.normal(0.30, 0.02, 3), rng.normal(0.28, 0.01, 3)),
           (rng.normal(0.40, 0.01, 10), rng.normal(0.39, 0.03, 10)),
           (rng.normal(1.00, 0.20, 4), rng.normal(1.10, 0.05, 7))]


@pytest.mark.parametrize("a, b", SAMPLES)
def test_one_sided_welch_equals_scipy(a: np.ndarray, b: np.ndarray) -> None:
    e = difference(Group.of(a), Group.of(b))
    assert e.value == pytest.approx(a.mean() - b.mean(), rel=1e-12)
    for alternative, p in (("greater", p_greater(e)), ("less", p_less(e))):
        ref = ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue
        assert p == pytest.approx(ref, rel=1e-9)
    lo, hi = e.ci()
    ref = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-9)


@pytest.mark.parametrize("a, b", SAMPLES)
@pytest.mark.parametrize("delta", [0.005, 0.02, 0.2])
def test_tost_equals_statsmodels_ttost_ind(a: np.ndarray, b: np.ndarray, delta: float) -> None:
    e = difference(Group.of(a), Group.of(b))
    ref = ttost_ind(a, b, -delta, delta, usevar="unequal")[0]
    assert p_within(e, -delta, delta) == pytest.approx(ref, rel=1e-9)


def test_outside_is_the_doubled_nearer_side() -> None:
    a, b = SAMPLES[0]
    e = difference(Group.of(a), Group.of(b))
    assert p_outside(e, -0.01, 0.01) == pytest.approx(
        2 * min(p_less(e, -0.01), p_greater(e, 0.01)))
    assert p_outside(e, -math.inf, 0.01) == pytest.approx(p_greater(e, 0.01))


def test_holm_equals_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.2, math.nan, 0.049]
    ours = holm(p)
    ref = multipletests([x for x in p if not math.isnan(x)], method="holm")[1]
    assert math.isnan(ours[5])
    np.testing.assert_allclose([x for x in ours if not math.isnan(x)], ref, rtol=1e-12)


def test_a_contrast_of_three_groups() -> None:
    g = [Group.of(x) for x in (rng.normal(1, 0.1, 5), rng.normal(2, 0.2, 6),
                               rng.normal(0, 0.3, 4))]
    w = [1.0, -0.5, 2.0]
    e = contrast(g, w)
    assert e.value == pytest.approx(sum(wi * gi.mean for wi, gi in zip(w, g, strict=True)))
    var = [wi ** 2 * gi.var / gi.n for wi, gi in zip(w, g, strict=True)]
    assert e.se == pytest.approx(math.sqrt(sum(var)))
    # Welch–Satterthwaite degrees of freedom.
    assert e.df == pytest.approx(sum(var) ** 2 / sum(
        v ** 2 / (gi.n - 1) for v, gi in zip(var, g, strict=True)))


def test_points_have_no_test() -> None:
    one = difference(Group.of([0.3]), Group.of([0.2]))
    assert one.point and math.isnan(one.se) and math.isnan(p_greater(one))
    same = difference(Group.of([5.0, 5.0]), Group.of([4.0, 4.0]))
    assert same.point and same.se == 0 and same.value == 1.0


def test_runs_needed_follows_the_normal_approximation() -> None:
    e = difference(Group.of([0.0, 0.1, 0.2]), Group.of([0.1, 0.2, 0.3]))
    # se1 = sqrt(0.01 + 0.01); n = ((z(0.95) + z(0.8)) · se1 / d)²
    z = 1.6448536269514722 + 0.8416212335729143
    assert runs_needed(e, 0.05, 0.05) == math.ceil((z * math.sqrt(0.02) / 0.05) ** 2)
    assert runs_needed(e, 0.0, 0.05) == math.inf
    assert runs_needed(e, 10.0, 0.05) == e.n + 1 == 4  # undecided at 3 runs: at least 4
