"""The inference behind the verdicts: contrasts of group means, their tests, Holm, and power.

Every question a verdict rule asks is about a *contrast*: a weighted sum ``L = Σ wᵢ·meanᵢ`` of
the means of independent groups of runs (a difference of two means, a difference of two
slopes of a curve, a log latency ratio). :func:`contrast` estimates it with Welch's standard
error and Welch–Satterthwaite degrees of freedom, and the tests here turn it into one-sided
p-values:

* :func:`p_greater` / :func:`p_less`: ``L > b`` / ``L < b`` (a one-sided Welch t-test; two
  groups and ``b = 0`` is ``scipy.stats.ttest_ind(..., equal_var=False, alternative=...)``);
* :func:`p_within`: ``lo < L < hi`` by two one-sided tests (TOST: the larger of the two
  p-values; ``lo = −δ, hi = δ`` is the equivalence test of statsmodels' ``ttost_ind`` with
  ``usevar="unequal"``), and :func:`p_outside`: ``L < lo`` or ``L > hi`` (Bonferroni over the
  two sides);
* :func:`holm`: Holm's step-down adjustment of a family of p-values (statsmodels'
  ``multipletests(method="holm")``): rejecting where the adjusted value is below α controls the
  family-wise error at α whatever the dependence between the tests.

These are a few lines over scipy's t distribution, written here rather than taken from
statsmodels because the rules need them on summary statistics (mean, variance, count) of
contrasts of several groups, and a simulation judges thousands of tables (statsmodels is a test
dependency: ``tests/test_inference.py`` checks these against it).

A contrast whose groups have one run each has no standard error (``se`` is NaN); one whose
groups all have zero variance (MACs, bytes, a deterministic pruning measured twice) has
``se == 0``. Both are *point* estimates: the rules compare them directly, without a test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special as _sp

#: Power the "runs needed" figures aim for.
POWER = 0.8


@dataclass(frozen=True)
class Group:
    """One group of runs, summarised: mean, sample variance (ddof 1; NaN for one run), count."""

    mean: float
    var: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> Group:
        x = np.asarray(values, dtype=float)
        x = x[np.isfinite(x)]
        if len(x) == 0:
            return cls(math.nan, math.nan, 0)
        return cls(float(x.mean()), float(x.var(ddof=1)) if len(x) > 1 else math.nan, len(x))


@dataclass(frozen=True)
class Estimate:
    """A contrast: its value, standard error (NaN: a point; 0: exact) and degrees of freedom,
    and ``se1``, the standard error the same contrast would have with one run per group (for
    the runs-needed figures)."""

    value: float
    se: float
    df: float
    se1: float = math.nan
    n: int = 0

    @property
    def point(self) -> bool:
        """No test is possible: one run per group, or no variance at all."""
        return not (self.se > 0)

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided confidence interval (the value itself for a point estimate)."""
        if self.point:
            return self.value, self.value
        h = float(_sp.stdtrit(self.df, 0.5 + level / 2)) * self.se
        return self.value - h, self.value + h


def contrast(groups: Sequence[Group], weights: Sequence[float]) -> Estimate:
    """``Σ wᵢ·meanᵢ`` with Welch's standard error and Welch–Satterthwaite degrees of freedom."""
    value = float(sum(w * g.mean for w, g in zip(weights, groups, strict=True)))
    n = min((g.n for g in groups), default=0)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan)
    if any(g.n < 2 for g in groups):
        return Estimate(value, math.nan, math.nan, n=n)
    terms = [w * w * g.var / g.n for w, g in zip(weights, groups, strict=True)]
    var = sum(terms)
    if var <= 0:
        return Estimate(value, 0.0, math.inf, 0.0, n)
    df = var * var / sum(t * t / (g.n - 1) for t, g in zip(terms, groups, strict=True) if t > 0)
    se1 = math.sqrt(sum(w * w * g.var for w, g in zip(weights, groups, strict=True)))
    return Estimate(value, math.sqrt(var), df, se1, n)


def exact(value: float) -> Estimate:
    """A value known exactly (MACs, bytes, a ratio of them): a point with no spread."""
    return Estimate(value, 0.0, math.inf, 0.0, 1)


def difference(a: Group, b: Group) -> Estimate:
    """``mean a − mean b``."""
    return contrast([a, b], [1.0, -1.0])


def p_greater(e: Estimate, bound: float = 0.0) -> float:
    """One-sided p-value of ``L > bound`` (NaN for a point estimate)."""
    if e.point:
        return math.nan
    # scipy.special's t distribution: the same values as scipy.stats.t, fifty times faster
    # (a calibration judges thousands of tables).
    return float(_sp.stdtr(e.df, -(e.value - bound) / e.se))


def p_less(e: Estimate, bound: float = 0.0) -> float:
    """One-sided p-value of ``L < bound`` (NaN for a point estimate)."""
    if e.point:
        return math.nan
    return float(_sp.stdtr(e.df, (e.value - bound) / e.se))


def p_within(e: Estimate, lo: float, hi: float) -> float:
    """TOST p-value of ``lo < L < hi`` (either bound may be infinite: one side only)."""
    sides = ([p_greater(e, lo)] if math.isfinite(lo) else []) + \
            ([p_less(e, hi)] if math.isfinite(hi) else [])
    return max(sides) if sides else math.nan


def p_outside(e: Estimate, lo: float, hi: float) -> float:
    """p-value of ``L < lo or L > hi`` (the smaller one-sided p-value, doubled when both
    bounds are finite)."""
    sides = ([p_less(e, lo)] if math.isfinite(lo) else []) + \
            ([p_greater(e, hi)] if math.isfinite(hi) else [])
    if not sides or any(math.isnan(p) for p in sides):
        return math.nan
    return min(1.0, min(sides) * len(sides))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (NaN stays NaN and does not count towards the family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    if len(idx) == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out.tolist()


def runs_needed(e: Estimate, distance: float, level: float, power: float = POWER) -> float:
    """Runs per group at which a one-sided test at ``level`` has ``power`` against an effect
    ``distance`` away from the boundary, at the observed spread (normal approximation);
    ``inf`` where the effect sits on the boundary, NaN for a point estimate. Never fewer than
    one run more than the estimate has (``n``): a test undecided at ``n`` runs needs more, which
    the normal approximation, optimistic at few runs, can understate."""
    if e.point or not math.isfinite(e.se1):
        return math.nan
    if distance <= 0:
        return math.inf
    z = float(_sp.ndtri(1 - level) + _sp.ndtri(power))
    return max(2.0, e.n + 1.0, math.ceil((z * e.se1 / distance) ** 2))
