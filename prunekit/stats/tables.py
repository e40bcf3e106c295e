"""Runs × ratios tables and per-(scenario, ratio) summaries of one metric.

:func:`runs_table` lays out one scenario's metric like the paper's Tables V–XIV (a row per run,
a column per pruning ratio, then max, min, avg and std dev rows); :func:`per_class_table` gives
the mean per-class AP by ratio and :func:`summary` the mean, std dev and run count per scenario
and ratio. Standard deviations are population (``ddof=0``, the paper's) or sample (``ddof=1``)
ones, as ``std`` says; :func:`ratio_label` and :func:`std_label` are the labels used for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd

from prunekit.errors import PrunekitError

StdKind = Literal["population", "sample"]


def ratio_label(ratio: float) -> str:
    """``0.25`` → ``"25%"``, as the paper's column headers."""
    return f"{round(ratio * 100, 4):g}%"


def std_label(std: StdKind) -> str:
    return f"std dev ({std})"


def _ddof(std: StdKind) -> int:
    if std not in ("population", "sample"):
        raise PrunekitError(f"std {std!r} is not known; use 'population' or 'sample'")
    return 0 if std == "population" else 1


def runs_table(df: pd.DataFrame, scenario: str, metric: str,
               std: StdKind = "population") -> pd.DataFrame:
    """One scenario's metric as the paper's appendix tables: a row per run, a column per ratio,
    then ``max``, ``min``, ``avg`` and ``std dev (<kind>)`` rows.

    Returns:
        A float table (NaN where a run lacks a ratio); empty when the metric has no values.
    """
    ddof = _ddof(std)
    sub = df[(df["scenario"] == scenario) & df[metric].notna()]
    if sub.empty:
        return pd.DataFrame()
    wide = sub.pivot(index="run", columns="ratio", values=metric).sort_index()
    wide = wide[sorted(wide.columns)]
    summary = pd.DataFrame([wide.max(), wide.min(), wide.mean(), wide.std(ddof=ddof)],
                           index=["max", "min", "avg", std_label(std)])
    table = pd.concat([wide.set_axis([f"run {r}" for r in wide.index]), summary])
    table.columns = [ratio_label(r) for r in table.columns]
    table.index.name = "row"
    return table


def per_class_table(df: pd.DataFrame, scenario: str, prefix: str = "ap") -> pd.DataFrame:
    """Mean per-class AP (columns ``<prefix>.<class>``) of one scenario: classes × ratios."""
    cols = sorted(c for c in df.columns if c.startswith(f"{prefix}.") and df[c].notna().any())
    sub = df[df["scenario"] == scenario]
    if not cols or sub.empty:
        return pd.DataFrame()
    means = sub.groupby("ratio")[cols].mean().T
    means.index = [c[len(prefix) + 1:] for c in cols]
    means.index.name = "class"
    means.columns = [ratio_label(r) for r in means.columns]
    return means


def summary(df: pd.DataFrame, metric: str, std: StdKind = "population") -> pd.DataFrame:
    """Mean, standard deviation and run count of ``metric`` per (scenario, ratio)."""
    g = df.dropna(subset=[metric]).groupby(["scenario", "ratio"])[metric]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=_ddof(std)), "n": g.count()})


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: bool = True) -> str:
    """A markdown table (first column left-aligned; the others right-aligned when numeric)."""
    # Written by hand: pandas' to_markdown needs tabulate, a dependency for a dozen lines.
    rest = "---:" if numeric else ":---"
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + [rest] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
