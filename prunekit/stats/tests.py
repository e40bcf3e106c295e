"""The statistical tests: one-way ANOVA between scenarios, per pruning ratio.

:func:`comparisons` finds the paper's comparisons in a results table (every pair of scenarios
that differs in exactly one of score method, granularity or colour, ordered and labelled as the
paper's Tables I–IV), :func:`f_oneway_p` gives the one-way ANOVA p-value between two groups of
runs (or NaN and the reason when the test is undefined), and :func:`anova` tabulates those
p-values per comparison and ratio as an :class:`Anova`. (These are statistical tests, not pytest
tests; the package's test suite is ``tests/test_stats.py``.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from prunekit.stats.loading import (
    _COLOUR_NAMES,
    _GRANULARITY_NAMES,
    _METHOD_NAMES,
    _ORDER,
    ATTRIBUTES,
)
from prunekit.stats.tables import ratio_label


@dataclass(frozen=True)
class Comparison:
    """Two scenarios that differ in exactly one factor (method, granularity or colour)."""

    factor: str
    a: str
    b: str
    label: str
    attrs_a: tuple[tuple[str, str], ...]
    attrs_b: tuple[tuple[str, str], ...]

    def attr(self, side: str, name: str) -> str:
        return dict(self.attrs_a if side == "a" else self.attrs_b)[name]


@dataclass
class Anova:
    """One-way ANOVA p-values per comparison (rows, by label) and ratio (columns, floats)."""

    metric: str
    pvalues: pd.DataFrame
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)


def _scenario_attributes(df: pd.DataFrame) -> dict[str, dict[str, str | None]]:
    out = {}
    for scenario, sub in df.groupby("scenario", sort=True):
        out[scenario] = {a: (str(sub[a].dropna().iloc[0]) if a in sub and sub[a].notna().any()
                             else None) for a in ATTRIBUTES}
    return out


def _rank(factor: str, level: str) -> tuple[int, str]:
    order = _ORDER[factor]
    return (order.index(level) if level in order else len(order), level)


def comparisons(df: pd.DataFrame) -> list[Comparison]:
    """The paper's comparisons present in ``df``: every pair of scenarios whose granularity,
    method and colour are all known and differ in exactly one of them, ordered as Tables I–IV
    (score method, then granularity, then colour)."""
    attrs = _scenario_attributes(df)
    known = {s: a for s, a in attrs.items() if all(a[k] is not None for k in ATTRIBUTES)}
    names = sorted(known)
    found = []
    for i, s in enumerate(names):
        for t in names[i + 1:]:
            diff = [k for k in ATTRIBUTES if known[s][k] != known[t][k]]
            if len(diff) != 1:
                continue
            factor = diff[0]
            a, b = sorted((s, t), key=lambda x, f=factor: _rank(f, known[x][f]))
            found.append((factor, a, b))
    factor_order = {"method": 0, "granularity": 1, "colour": 2}

    def key(item: tuple[str, str, str]) -> tuple:
        factor, a, _ = item
        rest = [_rank(k, known[a][k]) for k in ("granularity", "method", "colour") if k != factor]
        return (factor_order[factor], rest, item)

    out, seen = [], set()
    for factor, a, b in sorted(found, key=key):
        label = _comparison_label(factor, known[a], known[b])
        if label in seen:  # two scenarios with the same attributes: name them
            label = f"{label} [{a} vs. {b}]"
        seen.add(label)
        out.append(Comparison(factor, a, b, label, tuple(known[a].items()),
                              tuple(known[b].items())))
    return out


def _name(factor: str, level: str) -> str:
    names = {"method": _METHOD_NAMES, "granularity": _GRANULARITY_NAMES,
             "colour": _COLOUR_NAMES}[factor]
    return names.get(level, level)


def _comparison_label(factor: str, a: dict, b: dict) -> str:
    vs = f"{_name(factor, a[factor])} vs. {_name(factor, b[factor])}"
    if factor == "colour":
        return f"{vs} ({_name('granularity', a['granularity'])} {_name('method', a['method'])})"
    other = "granularity" if factor == "method" else "method"
    context = _name(other, a[other])
    if a["colour"] == "grey":
        context += ", greyscale"
    return f"{vs} ({context})"


def f_oneway_p(a: Sequence[float], b: Sequence[float]) -> tuple[float, str | None]:
    """One-way ANOVA p-value between two groups of runs, or NaN and the reason when the test
    is undefined (fewer than two runs in a group, no variance within either group)."""
    from scipy.stats import f_oneway

    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if len(x) < 2 or len(y) < 2:
        return math.nan, f"fewer than two runs in a group ({len(x)} and {len(y)})"
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return math.nan, "no variance within either group"
    # scipy warns on degenerate input; those cases are reported as notes instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(f_oneway(x, y).pvalue)
    if not math.isfinite(p):
        return math.nan, "the F statistic is undefined"
    return p, None


def anova(df: pd.DataFrame, metric: str,
          comps: Sequence[Comparison] | None = None) -> Anova:
    """One-way ANOVA over the runs of each group, per ratio, for each comparison.

    Args:
        df: the results table (see :func:`load_results`).
        metric: the column to compare.
        comps: the comparisons; by default :func:`comparisons` of ``df``.

    Returns:
        The p-values; a cell without a test holds NaN and is explained in ``notes``.
    """
    comps = list(comparisons(df) if comps is None else comps)
    ratios = sorted(df["ratio"].unique())
    groups = {k: v.to_numpy() for k, v in df.groupby(["scenario", "ratio"])[metric]}
    table = pd.DataFrame(np.nan, index=[c.label for c in comps], columns=ratios, dtype=float)
    notes, tested = [], set()
    for c in comps:
        for r in ratios:
            a, b = groups.get((c.a, r)), groups.get((c.b, r))
            if a is None or b is None:
                if a is not None or b is not None:
                    notes.append(f"{c.label} at {ratio_label(r)}: "
                                 f"{c.b if a is not None else c.a} has no runs at this ratio")
                continue
            tested.add(r)
            p, why = f_oneway_p(a, b)
            table.loc[c.label, r] = p
            if why:
                notes.append(f"{c.label} at {ratio_label(r)}: {why}")
    # Ratios no comparison has on both sides carry no test; the other NaN cells stay as n/a.
    table = table[[r for r in ratios if r in tested]]
    return Anova(metric, table, comps, notes)
