"""Verdicts on a study's findings: what is common to every study.

A study (the paper's, in :mod:`prunekit.stats.findings.paper`; others beside it) states findings
and judges each on a results table as a :class:`Finding` with one of the verdicts
``REPRODUCED``, ``PARTLY``, ``NOT_REPRODUCED`` or ``NOT_TESTABLE``. This module holds those, the
significance level ``ALPHA``, and the helpers the studies share: the context a study's findings
are computed from (comparisons, ANOVA tables and per-cell means), the per-ratio cells of a
comparison, p-value formatting and significance, and the verdict over several comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from prunekit.stats.tables import StdKind
from prunekit.stats.tests import Anova, Comparison

ALPHA = 0.05
_EPS = 1e-9

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable here"


@dataclass
class Finding:
    """One of the paper's findings and what this data says about it."""

    number: int
    claim: str
    verdict: str
    evidence: list[str]


@dataclass
class _Context:
    df: pd.DataFrame
    std: StdKind
    comps: list[Comparison]
    anovas: dict[str, Anova]
    means: dict[str, pd.DataFrame]


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else f"{p:.2e}"


def _cells(ctx: _Context, metric: str, c: Comparison, lo: float, hi: float) -> list[tuple]:
    """(ratio, mean a, mean b, p) for the comparison's ratios within [lo, hi]."""
    an, means = ctx.anovas.get(metric), ctx.means.get(metric)
    if an is None or means is None or c.label not in an.pvalues.index:
        return []
    out = []
    for r in an.pvalues.columns:
        if lo - _EPS <= r <= hi + _EPS and (c.a, r) in means.index and (c.b, r) in means.index:
            out.append((r, float(means.loc[(c.a, r), "mean"]),
                        float(means.loc[(c.b, r), "mean"]), float(an.pvalues.loc[c.label, r])))
    return out


def _significant(p: float) -> bool:
    return math.isfinite(p) and p < ALPHA


def _aggregate(results: list[tuple[bool, bool]], missing: list[str]) -> str:
    """Verdict from (all ratios pass, some ratio passes) per comparison tested."""
    if not results:
        return NOT_TESTABLE
    if all(full for full, _ in results) and not missing:
        return REPRODUCED
    if any(some for _, some in results) or all(full for full, _ in results):
        return PARTLY
    return NOT_REPRODUCED


def _missing(tested: list[Comparison], side_attr: str, expected: Sequence[str]) -> list[str]:
    have = {c.attr("a", side_attr) for c in tested}
    return [e for e in expected if e not in have]
