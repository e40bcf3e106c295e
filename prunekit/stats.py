"""Statistics and the findings report for an experiment grid (`prunekit stats`).

The input is the grid's long-format results table: one row per scenario × run × pruning ratio,
with columns ``scenario``, ``run``, ``ratio`` (a fraction, 0.75 for 75 %) and metrics (``map``,
``adv_map``, ``latency_ms``, ``macs``, ..., per-class ``ap.<class>``). From it this module builds

* per scenario and metric, a runs × ratios table with max, min, avg and std dev rows, laid out
  like the paper's Tables V–XIV (:func:`runs_table`);
* one-way ANOVA p-values per ratio for the paper's comparisons (Tables I–IV, :func:`anova`):
  every pair of scenarios that differs in exactly one of score method, granularity or colour;
* PNG figures with standard-deviation error bars (Fig. 1a/1b, 2a/2b, clean vs adversarial);
* ``report.md``: the input, one verdict per paper finding, the figures, the ANOVA tables and the
  per-scenario tables (:func:`report`).

Standard deviations are population standard deviations (``ddof=0``) by default, because that is
what the paper's tables hold (Table V, 0 %: the ten runs give 8.0e-04 with ``ddof=0`` and 8.4e-04
with ``ddof=1``); ``std="sample"`` uses ``ddof=1``. The label says which.

Verdict rules
-------------

Findings use the clean ``map`` (and ``latency_ms`` for 4 and 5); adversarial mAP is reported
beside them as context. "Significant" means a one-way ANOVA p-value below ``ALPHA`` (0.05, the
paper's threshold); a cell without a p-value (one run, or no variance in either group) never
counts as significant, and a comparison or scenario with no p-value at all is not tested. Ratio
ranges are inclusive and use only the ratios present.

1. *mAP falls as the ratio rises, sharply beyond about 60 %.* Per scenario: (a) no rise of the
   mean between adjacent ratios larger than the larger of the two cells' std devs (run-to-run
   noise); (b) the last ratio's mean is below the first's with p < 0.05; (c) the mean falls
   faster per ratio point from the largest ratio ≤ 60 % to the largest ratio ≤ 90 % than from the
   first ratio to the largest ratio ≤ 60 % (0→50 % vs 50→90 % on the paper's grid). All scenarios
   pass (a)–(c): reproduced; some scenario passes (b), or (c) cannot be tested for lack of
   ratios on both sides of 60 %: partly; none: not reproduced.
2. *DeepLIFT beats HYDRA on mAP at 50–85 %, for both granularities.* For each DeepLIFT-vs-HYDRA
   comparison, at every ratio in 50–85 %: DeepLIFT's mean is higher and p < 0.05.
3. *Unstructured beats structured on mAP at 25–90 %.* For each unstructured-vs-structured
   comparison, at every ratio in 25–90 %: unstructured's mean is higher and p < 0.05.
4. *Structured pruning is faster, about half the latency of unstructured from 65 % on.* For each
   unstructured-vs-structured comparison, at every ratio ≥ 65 %: structured's mean latency is at
   most ``HALF_LATENCY`` (0.65) × unstructured's and p < 0.05. "About half" admits 0.65 because the
   paper's own 65 % cells are 0.60× and 0.61×. A ratio where structured is significantly faster
   but by less counts for "partly".
5. *The score method does not change latency.* For each DeepLIFT-vs-HYDRA comparison, p ≥ 0.05 at
   more than half of the ratios that have a p-value.
6. *Greyscale costs mAP at 0–65 %, and the gap closes at 95–99 %.* For each greyscale-vs-colour
   comparison: (a) at every ratio in 0–65 % grey's mean is lower and p < 0.05; (b) at every ratio
   ≥ 95 % p ≥ 0.05 or the gap is at most half the mean gap over 0–65 %. (a) and (b): reproduced;
   one of them: partly; neither: not reproduced.

For 2–5, the verdict over the comparisons found: all pass, and the paper's comparisons are all
present (both granularities for 2 and 5, both score methods for 3 and 4): reproduced; all pass
but one of the paper's comparisons is absent, or some ratio passes somewhere: partly reproduced;
no ratio passes anywhere: not reproduced. A finding whose scenarios, metric or ratios are absent
is "not testable here".
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from prunekit.errors import DataError, PrunekitError

StdKind = Literal["population", "sample"]
Results = pd.DataFrame | str | os.PathLike | Sequence[pd.DataFrame | str | os.PathLike]

ALPHA = 0.05
HALF_LATENCY = 0.65
GAP_CLOSED = 0.5
_EPS = 1e-9

KEYS = ("scenario", "run", "ratio")
ATTRIBUTES = ("granularity", "method", "colour")
#: Metrics that get a runs × ratios table, in report order.
TABLE_METRICS = ("map", "map50", "map75", "adv_map", "adv_map50", "adv_map75", "latency_ms",
                 "macs", "flops", "params_nonzero", "sparsity", "bytes_stored",
                 "compression_ratio")
#: Metrics that get ANOVA tables (the paper's Tables I–IV, plus adversarial mAP).
ANOVA_METRICS = ("map", "latency_ms", "adv_map")
_OTHER_METRICS = ("latency_iqr_ms", "params_total")
_PER_CLASS = ("ap", "ap50", "adv_ap", "adv_ap50")

LABELS = {
    "map": "mAP@[.5:.95]", "map50": "mAP@.5", "map75": "mAP@.75",
    "adv_map": "adversarial mAP@[.5:.95]", "adv_map50": "adversarial mAP@.5",
    "adv_map75": "adversarial mAP@.75", "latency_ms": "latency per image (ms)", "macs": "MACs",
    "flops": "FLOPs", "params_nonzero": "non-zero parameters", "sparsity": "sparsity",
    "bytes_stored": "checkpoint bytes", "compression_ratio": "compression ratio",
}
_METHOD_NAMES = {"deeplift": "DeepLIFT", "hydra": "HYDRA", "magnitude": "magnitude",
                 "l1-filter": "L1-filter", "random": "random", "taylor": "Taylor"}
_GRANULARITY_NAMES = {"weight": "Unstructured", "kernel": "Kernel", "filter": "Structured"}
_COLOUR_NAMES = {"grey": "Greyscale", "rgb": "Colour"}
# Spellings of attribute values in results tables, mapped to the grid's.
_SYNONYMS = {"granularity": {"unstructured": "weight", "structured": "filter",
                             "channel": "filter"},
             "method": {"l1": "l1-filter", "scaled": "hydra"},
             "colour": {"gray": "grey", "greyscale": "grey", "grayscale": "grey",
                        "colour": "rgb", "color": "rgb"}}
# Which level of a factor is named first in a comparison, as in the paper's tables.
_ORDER = {"method": ["deeplift", "hydra", "l1-filter", "magnitude", "taylor", "random"],
          "granularity": ["weight", "kernel", "filter"], "colour": ["grey", "rgb"]}

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable here"

# Figures: fixed size and resolution so that the same input gives the same bytes.
_FIG_SIZE = (8.0, 5.0)
_DPI = 110
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
            "#17becf", "#7f7f7f", "#bcbd22")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
_LINESTYLES = ("-", "--", "-.", ":")


# ------------------------------------------------------------------------------------ loading

def load_results(results: Results) -> pd.DataFrame:
    """Read and check one or more results tables and concatenate them.

    Args:
        results: a DataFrame, a CSV path, or a sequence of either.

    Returns:
        The long-format table sorted by scenario, ratio and run, with ``granularity``,
        ``method`` and ``colour`` filled in from the scenario names where absent.

    Raises:
        DataError: a file is missing, empty or unreadable, lacks ``scenario``/``run``/``ratio``
            or any metric, holds a ratio outside [0, 1], or repeats a scenario/run/ratio.
    """
    if isinstance(results, pd.DataFrame | str | os.PathLike):
        results = [results]
    if not results:
        raise DataError("no results given; pass the results CSV written by the experiment grid")
    frames = [_read_one(r).assign(_source=_source_name(r)) for r in results]
    df = pd.concat(frames, ignore_index=True)
    dup = df.duplicated(list(KEYS), keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        same = df[dup & (df["scenario"] == first["scenario"]) & (df["run"] == first["run"])
                  & (df["ratio"] == first["ratio"])]
        where = " and ".join(dict.fromkeys(same["_source"]))
        raise DataError(f"{where} hold(s) scenario {first['scenario']!r}, run {first['run']}, "
                        f"ratio {first['ratio']:g} more than once; remove the repeated rows (or "
                        f"the CSV given twice)")
    df = df.drop(columns="_source")
    for attr in ATTRIBUTES:
        if attr not in df.columns:
            df[attr] = None
    inferred = {s: infer_attributes(s) for s in df["scenario"].unique()}
    for attr in ATTRIBUTES:
        given = df[attr].astype("string").str.strip().str.lower()
        given = given.replace(_SYNONYMS[attr]).replace("", pd.NA)
        guess = df["scenario"].map(lambda s, a=attr: inferred[s][a])
        df[attr] = given.astype(object).where(given.notna(), guess)
    for scenario, sub in df.groupby("scenario"):
        for attr in ATTRIBUTES:
            values = sorted(sub[attr].dropna().astype(str).unique())
            if len(values) > 1:
                raise DataError(f"scenario {scenario!r} mixes {attr} values {values}; give each "
                                f"{attr} its own scenario name")
    return df.sort_values(["scenario", "ratio", "run"], kind="stable").reset_index(drop=True)


def _source_name(source: pd.DataFrame | str | os.PathLike) -> str:
    return "the results table" if isinstance(source, pd.DataFrame) else str(source)


def _read_one(source: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    name = _source_name(source)
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"{name}: no such file; give the results CSV written by the "
                            f"experiment grid (make all-scenarios)")
        if path.is_dir():
            raise DataError(f"{name} is a folder; give the results CSV inside it")
        try:
            df = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise DataError(f"{name} is empty; give a results CSV with a header line "
                            f"(scenario,run,ratio,map,...) and one row per run") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise DataError(f"{name} is not a readable CSV ({str(e).splitlines()[0]}); give "
                            f"the results CSV written by the experiment grid") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [k for k in KEYS if k not in df.columns]
    if missing:
        raise DataError(f"{name} lacks column(s) {', '.join(missing)}; a results table needs "
                        f"scenario, run and ratio columns plus at least one metric (map, "
                        f"latency_ms, ...)")
    if df.empty:
        raise DataError(f"{name} has a header but no rows; run the experiment grid first")
    metrics = [c for c in df.columns if _is_metric(c)]
    for c in metrics:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    if not any(df[c].notna().any() for c in metrics):
        raise DataError(f"{name} has no metric column with numbers; expected some of "
                        f"{', '.join(TABLE_METRICS)}")
    if df["scenario"].isna().any():
        raise DataError(f"{name} has rows without a scenario; fill in the scenario column")
    df["scenario"] = df["scenario"].astype(str).str.strip()
    run = pd.to_numeric(df["run"], errors="coerce")
    if run.isna().any() or (run != run.round()).any():
        bad = df["run"][run.isna() | (run != run.round())].iloc[0]
        raise DataError(f"{name} has run {bad!r}; runs must be whole numbers (1, 2, ...)")
    df["run"] = run.astype(int)
    ratio = pd.to_numeric(df["ratio"], errors="coerce")
    if ratio.isna().any():
        bad = df["ratio"][ratio.isna()].iloc[0]
        raise DataError(f"{name} has ratio {bad!r}; ratios must be numbers")
    if ((ratio < 0) | (ratio > 1)).any():
        bad = ratio[(ratio < 0) | (ratio > 1)].iloc[0]
        raise DataError(f"{name} has ratio {bad:g}, outside [0, 1]; give ratios as fractions "
                        f"(75 % is 0.75)")
    # Ratios computed as 1 - k/n arrive with float noise; rounding lets them group together.
    df["ratio"] = ratio.astype(float).round(6)
    return df


def _is_metric(column: str) -> bool:
    return (column in TABLE_METRICS or column in _OTHER_METRICS
            or any(column.startswith(f"{p}.") for p in _PER_CLASS))


def infer_attributes(scenario: str) -> dict[str, str | None]:
    """Granularity, score method and colour read from a scenario name such as
    ``unstructured-deeplift-grey``; ``None`` where the name does not say."""
    name = scenario.lower()
    tokens = set(re.split(r"[^a-z0-9]+", name))
    granularity = None
    if tokens & {"unstructured", "weight"}:
        granularity = "weight"
    elif tokens & {"structured", "filter", "channel"}:
        granularity = "filter"
    elif "kernel" in tokens:
        granularity = "kernel"
    method = None
    if "l1" in tokens:
        method = "l1-filter"
    else:
        method = next((m for m in _METHOD_NAMES if m in tokens), None)
    colour = "grey" if tokens & {"grey", "gray", "greyscale", "grayscale"} else "rgb"
    return {"granularity": granularity, "method": method, "colour": colour}


def metrics_present(df: pd.DataFrame, candidates: Sequence[str] = TABLE_METRICS) -> list[str]:
    """The candidate metrics that have at least one number in ``df``, in the given order."""
    return [m for m in candidates if m in df.columns and df[m].notna().any()]


# ------------------------------------------------------------------------------------- tables

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


# -------------------------------------------------------------------------------------- ANOVA

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


# ------------------------------------------------------------------------------------ figures

def _styles(scenarios: Sequence[str]) -> dict[str, dict]:
    # Colour, marker and line style all change from one scenario to the next, so the curves stay
    # apart in greyscale print and for colour-blind readers.
    return {s: {"color": _COLOURS[i % len(_COLOURS)], "marker": _MARKERS[i % len(_MARKERS)],
                "linestyle": _LINESTYLES[i % len(_LINESTYLES)]}
            for i, s in enumerate(sorted(scenarios))}


def _new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = _FIG_SIZE):
    # A bare Figure renders with Agg without touching pyplot's global backend, so calling this
    # from a notebook or a GUI program never switches the user's backend.
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    return fig, axes


def _ratio_axis(ax, ratios: Sequence[float], min_gap: float = 0.0) -> None:  # noqa: ANN001
    """Ticks at the measured ratios; in narrow panels, labels closer than ``min_gap`` points to
    the next labelled one (from the right) are left blank so they do not overprint."""
    ticks = [r * 100 for r in ratios]
    labels, last = [], math.inf
    for t, r in zip(reversed(ticks), reversed(ratios), strict=True):
        keep = last - t >= min_gap
        labels.append(ratio_label(r) if keep else "")
        last = t if keep else last
    ax.set_xticks(ticks, labels[::-1])
    if len(ticks) > 6:
        for label in ax.get_xticklabels():
            label.set_rotation(45)
    ax.set_xlim(min(ticks) - 3, max(ticks) + 3)
    ax.set_xlabel("pruning ratio")
    ax.grid(True, alpha=0.3)


def figure_vs_ratio(df: pd.DataFrame, metric: str, *, scenarios: Sequence[str] | None = None,
                    std: StdKind = "population", title: str | None = None):
    """Mean ``metric`` against pruning ratio, one curve per scenario, error bars ±1 std dev.

    Returns:
        A matplotlib ``Figure`` (Agg), or ``None`` when the metric has no values.
    """
    stats = summary(df, metric, std)
    all_scenarios = sorted(df["scenario"].unique())
    chosen = sorted(scenarios) if scenarios is not None else all_scenarios
    chosen = [s for s in chosen if s in stats.index.get_level_values(0)]
    if not chosen:
        return None
    style = _styles(all_scenarios)
    fig, axes = _new_figure()
    ax = axes[0][0]
    # Curves share x positions; a small sideways shift keeps their error bars from hiding
    # each other. The shift is under a fifth of the closest ratios' spacing.
    ratios = sorted(stats.index.get_level_values(1).unique())
    gap = min(np.diff(ratios) * 100, default=10)
    step = min(0.6, gap / 5 / max(len(chosen) - 1, 1))
    for i, s in enumerate(chosen):
        cell = stats.loc[s]
        shift = (i - (len(chosen) - 1) / 2) * step
        ax.errorbar(cell.index * 100 + shift, cell["mean"], yerr=cell["std"].fillna(0),
                    label=s, capsize=4, elinewidth=1.2, markersize=6, linewidth=1.6,
                    **style[s])
    _ratio_axis(ax, ratios)
    ax.set_ylabel(f"mean {LABELS.get(metric, metric)}")
    ax.set_title(title or f"Mean {LABELS.get(metric, metric)} vs pruning ratio")
    ax.legend(title=f"error bars: ±1 {std} std dev over {_run_count(stats)} runs",
              fontsize=9, title_fontsize=9)
    return fig


def _run_count(stats: pd.DataFrame) -> str:
    lo, hi = int(stats["n"].min()), int(stats["n"].max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def figure_clean_vs_adversarial(df: pd.DataFrame, *, metric: str = "map",
                                std: StdKind = "population", title: str | None = None):
    """Clean against adversarial mAP per scenario, one panel each.

    Returns:
        A matplotlib ``Figure``, or ``None`` when ``metric`` or ``adv_<metric>`` is absent.
    """
    adv = f"adv_{metric}"
    if not metrics_present(df, (metric,)) or not metrics_present(df, (adv,)):
        return None
    clean_stats, adv_stats = summary(df, metric, std), summary(df, adv, std)
    scenarios = sorted(set(clean_stats.index.get_level_values(0))
                       | set(adv_stats.index.get_level_values(0)))
    style = _styles(sorted(df["scenario"].unique()))
    ncols = min(3, len(scenarios))
    nrows = math.ceil(len(scenarios) / ncols)
    fig, axes = _new_figure(nrows, ncols, (4.2 * ncols, 3.4 * nrows + 0.6))
    ratios = sorted(df["ratio"].unique())
    for k, ax in enumerate(axes.flat):
        if k >= len(scenarios):
            ax.set_visible(False)
            continue
        s = scenarios[k]
        colour, marker = style[s]["color"], style[s]["marker"]
        for stats, kind, line, face in ((clean_stats, "clean", "-", colour),
                                        (adv_stats, "adversarial", "--", "white")):
            if s in stats.index.get_level_values(0):
                cell = stats.loc[s]
                ax.errorbar(cell.index * 100, cell["mean"], yerr=cell["std"].fillna(0),
                            label=kind, color=colour, marker=marker, linestyle=line,
                            markerfacecolor=face, capsize=3, markersize=5)
        _ratio_axis(ax, ratios, min_gap=8)
        ax.set_title(s, fontsize=10)
        if k % ncols == 0:
            ax.set_ylabel(f"mean {LABELS.get(metric, metric)}")
        ax.legend(fontsize=8)
    fig.suptitle(title or f"Clean vs adversarial {LABELS.get(metric, metric)} "
                 f"(error bars: ±1 {std} std dev over {_run_count(clean_stats)} runs)")
    return fig


def figure_png(fig) -> bytes:  # noqa: ANN001 (matplotlib Figure)
    """PNG bytes of a figure, identical for identical figures (no software/date metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def figures(df: pd.DataFrame, std: StdKind = "population") -> dict[str, object]:
    """The report's figures by file stem: ``fig1a_map``, ``fig1b_latency``, ``fig2a_grey_map``,
    ``fig2b_grey_latency``, ``fig3_adversarial``; those whose data is absent are left out."""
    colour_pairs = [c for c in comparisons(df) if c.factor == "colour"]
    grey = sorted({s for c in colour_pairs for s in (c.a, c.b)})
    specs = [
        ("fig1a_map", "map", None, "Fig. 1a: mean mAP vs pruning ratio, all scenarios"),
        ("fig1b_latency", "latency_ms", None,
         "Fig. 1b: mean latency vs pruning ratio, all scenarios"),
    ]
    if grey:
        specs += [("fig2a_grey_map", "map", grey, "Fig. 2a: greyscale vs colour, mean mAP"),
                  ("fig2b_grey_latency", "latency_ms", grey,
                   "Fig. 2b: greyscale vs colour, mean latency")]
    out: dict[str, object] = {}
    for stem, metric, chosen, title in specs:
        if metrics_present(df, (metric,)):
            fig = figure_vs_ratio(df, metric, scenarios=chosen, std=std, title=title)
            if fig is not None:
                out[stem] = fig
    fig = figure_clean_vs_adversarial(df, std=std)
    if fig is not None:
        out["fig3_adversarial"] = fig
    return out


# ----------------------------------------------------------------------------------- findings

@dataclass
class Finding:
    """One of the paper's findings and what this data says about it."""

    number: int
    claim: str
    verdict: str
    evidence: list[str]


CLAIMS = {
    1: "mAP falls as the pruning ratio rises, sharply beyond about 60 %",
    2: "DeepLIFT scores beat HYDRA scores on mAP at 50–85 % for both granularities",
    3: "unstructured beats structured on mAP at 25–90 %",
    4: "structured pruning is faster, about half the latency of unstructured from 65 % on",
    5: "the score method does not change latency",
    6: "greyscale costs mAP at 0–65 %, and the gap closes at 95–99 %",
}


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


def _pairwise_finding(ctx: _Context, number: int, metric: str, tested: list[Comparison],
                      lo: float, hi: float, passes: Callable[[float, float, float], bool],
                      describe: Callable[[float, float], str], context_attr: str,
                      expected: Sequence[str]) -> Finding:
    """Findings 2–4: at every ratio in [lo, hi], ``passes(mean a, mean b, p)``."""
    evidence, results = [], []
    for c in tested:
        cells = _cells(ctx, metric, c, lo, hi)
        if not cells:
            continue
        if not any(math.isfinite(p) for *_, p in cells):
            evidence.append(f"{c.label}: no p-value at {ratio_label(lo)}–{ratio_label(hi)} "
                            f"(see the ANOVA notes), not testable")
            continue
        ok = [passes(ma, mb, p) for _, ma, mb, p in cells]
        results.append((all(ok), any(ok)))
        detail = "; ".join(f"{ratio_label(r)}: {describe(ma, mb)}, p = {_p(p)}"
                           f"{'' if good else ' ✗'}"
                           for (r, ma, mb, p), good in zip(cells, ok, strict=True))
        evidence.append(f"{c.label}: {sum(ok)} of {len(ok)} ratios pass ({detail})")
    missing = _missing(tested, context_attr, expected) if results else []
    for m in missing:
        evidence.append(f"no comparison for {_name(context_attr, m)}: its scenarios are absent")
    if not results:
        evidence.append(f"no comparison with {LABELS.get(metric, metric)} p-values at "
                        f"{ratio_label(lo)}–{ratio_label(hi)} in these results")
    return Finding(number, CLAIMS[number], _aggregate(results, missing), evidence)


def _adversarial_context(ctx: _Context, tested: list[Comparison], lo: float, hi: float,
                         higher: str) -> list[str]:
    lines = []
    for c in tested:
        cells = _cells(ctx, "adv_map", c, lo, hi)
        if cells:
            good = sum(1 for _, ma, mb, p in cells if ma > mb and _significant(p))
            lines.append(f"context, adversarial mAP, {c.label}: {higher} higher with p < "
                         f"{ALPHA} at {good} of {len(cells)} ratios")
    return lines


def _finding1(ctx: _Context) -> Finding:
    if "map" not in ctx.means:
        return Finding(1, CLAIMS[1], NOT_TESTABLE, ["the results have no map column"])
    stats = ctx.means["map"]
    groups = {k: v.to_numpy() for k, v in ctx.df.groupby(["scenario", "ratio"])["map"]}
    evidence, passes, falls = [], [], []
    for s in sorted(stats.index.get_level_values(0).unique()):
        cell = stats.loc[s]
        r, m, sd = list(cell.index), cell["mean"].to_numpy(), cell["std"].fillna(0).to_numpy()
        if len(r) < 2:
            evidence.append(f"{s}: only one ratio")
            continue
        rises = [f"{ratio_label(r[i])}→{ratio_label(r[i + 1])} (+{m[i + 1] - m[i]:.3f})"
                 for i in range(len(r) - 1) if m[i + 1] - m[i] > max(sd[i], sd[i + 1], _EPS)]
        p, _ = f_oneway_p(groups[(s, r[0])], groups[(s, r[-1])])
        fall = bool(m[-1] < m[0]) and _significant(p)
        mid = [x for x in r if x <= 0.6 + _EPS]
        pivot = mid[-1] if mid else None
        high = [x for x in r if pivot is not None and pivot < x <= 0.9 + _EPS]
        line = (f"{s}: mean mAP {m[0]:.3f} at {ratio_label(r[0])} → {m[-1]:.3f} at "
                f"{ratio_label(r[-1])} (p = {_p(p)}); "
                + (f"rises beyond noise: {', '.join(rises)}" if rises
                   else "no rise beyond run-to-run noise"))
        sharp = None
        if pivot is not None and pivot > r[0] and high:
            i0, ip, ih = 0, r.index(pivot), r.index(high[-1])
            slow = (m[i0] - m[ip]) / ((pivot - r[0]) * 10)
            fast = (m[ip] - m[ih]) / ((high[-1] - pivot) * 10)
            sharp = bool(fast > slow)
            line += (f"; loss per 10 points of ratio {slow:.4f} over {ratio_label(r[0])}–"
                     f"{ratio_label(pivot)} vs {fast:.4f} over {ratio_label(pivot)}–"
                     f"{ratio_label(high[-1])}")
        else:
            line += "; sharpness not testable (needs ratios on both sides of 60 %)"
        evidence.append(line)
        if not math.isfinite(p):
            evidence.append(f"{s}: no p-value between {ratio_label(r[0])} and "
                            f"{ratio_label(r[-1])} (one run, or no variance), not testable")
            continue
        passes.append(not rises and fall and sharp is True)
        falls.append(fall)
    if not passes:
        verdict = NOT_TESTABLE
    elif all(passes):
        verdict = REPRODUCED
    elif any(falls):
        verdict = PARTLY
    else:
        verdict = NOT_REPRODUCED
    if "adv_map" in ctx.means:
        adv = ctx.means["adv_map"]
        for s in sorted(adv.index.get_level_values(0).unique()):
            cell = adv.loc[s]["mean"]
            evidence.append(f"context, adversarial mAP, {s}: {cell.iloc[0]:.3f} at "
                            f"{ratio_label(cell.index[0])} → {cell.iloc[-1]:.3f} at "
                            f"{ratio_label(cell.index[-1])}")
    return Finding(1, CLAIMS[1], verdict, evidence)


def _method_comps(ctx: _Context) -> list[Comparison]:
    return [c for c in ctx.comps if c.factor == "method"
            and {c.attr("a", "method"), c.attr("b", "method")} == {"deeplift", "hydra"}]


def _granularity_comps(ctx: _Context) -> list[Comparison]:
    return [c for c in ctx.comps if c.factor == "granularity"
            and {c.attr("a", "granularity"), c.attr("b", "granularity")} == {"weight", "filter"}]


def _finding2(ctx: _Context) -> Finding:
    tested = _method_comps(ctx)
    f = _pairwise_finding(ctx, 2, "map", tested, 0.50, 0.85,
                          lambda a, b, p: a > b and _significant(p),
                          lambda a, b: f"{a:.3f} vs {b:.3f}", "granularity", ("weight", "filter"))
    f.evidence += _adversarial_context(ctx, tested, 0.50, 0.85, "DeepLIFT")
    return f


def _finding3(ctx: _Context) -> Finding:
    tested = _granularity_comps(ctx)
    f = _pairwise_finding(ctx, 3, "map", tested, 0.25, 0.90,
                          lambda a, b, p: a > b and _significant(p),
                          lambda a, b: f"{a:.3f} vs {b:.3f}", "method", ("deeplift", "hydra"))
    f.evidence += _adversarial_context(ctx, tested, 0.25, 0.90, "unstructured")
    return f


def _finding4(ctx: _Context) -> Finding:
    tested = _granularity_comps(ctx)
    f = _pairwise_finding(ctx, 4, "latency_ms", tested, 0.65, 1.0,
                          lambda a, b, p: b <= HALF_LATENCY * a and _significant(p),
                          lambda a, b: f"{b:.1f}/{a:.1f} ms = {b / a:.2f}×",
                          "method", ("deeplift", "hydra"))
    if f.verdict == NOT_REPRODUCED:
        # Structured significantly faster somewhere, only by less than "about half".
        faster = any(mb < ma and _significant(p) for c in tested
                     for _, ma, mb, p in _cells(ctx, "latency_ms", c, 0.65, 1.0))
        if faster:
            f.verdict = PARTLY
            f.evidence.append(f"structured is significantly faster at some ratio, but not "
                              f"≤ {HALF_LATENCY}× unstructured")
    return f


def _finding5(ctx: _Context) -> Finding:
    tested = _method_comps(ctx)
    evidence, results = [], []
    for c in tested:
        cells = [x for x in _cells(ctx, "latency_ms", c, 0.0, 1.0) if math.isfinite(x[3])]
        if not cells:
            continue
        same = [r for r, _, _, p in cells if p >= ALPHA]
        full = len(same) > len(cells) / 2
        results.append((full, full))
        r, ma, mb, _ = max(cells, key=lambda x: abs(x[1] - x[2]) / max(abs(x[2]), _EPS))
        diff = [ratio_label(r) for r, _, _, p in cells if p < ALPHA]
        evidence.append(f"{c.label}: p ≥ {ALPHA} at {len(same)} of {len(cells)} ratios"
                        + (f" (significant at {', '.join(diff)})" if diff else "")
                        + f"; largest mean difference {abs(ma - mb) / abs(mb) * 100:.1f} % "
                          f"({ma:.1f} vs {mb:.1f} ms at {ratio_label(r)})")
    missing = _missing(tested, "granularity", ("weight", "filter")) if results else []
    for m in missing:
        evidence.append(f"no comparison for {_name('granularity', m)}: its scenarios are absent")
    if not results:
        evidence.append("no DeepLIFT-vs-HYDRA comparison with latency_ms in these results")
    return Finding(5, CLAIMS[5], _aggregate(results, missing), evidence)


def _finding6(ctx: _Context) -> Finding:
    tested = [c for c in ctx.comps if c.factor == "colour"]
    evidence, verdicts = [], []
    for c in tested:
        low = _cells(ctx, "map", c, 0.0, 0.65)
        high = _cells(ctx, "map", c, 0.95, 1.0)
        if not any(math.isfinite(p) for *_, p in low + high):
            if low or high:
                evidence.append(f"{c.label}: no p-values (see the ANOVA notes), not testable")
            continue
        a_ok = b_ok = None
        if not any(math.isfinite(p) for *_, p in low):
            low = []  # no p-value: the grey cost cannot be tested
        if low:
            ok = [ma < mb and _significant(p) for _, ma, mb, p in low]
            a_ok = all(ok)
            evidence.append(f"{c.label}, 0–65 %: grey lower with p < {ALPHA} at {sum(ok)} of "
                            f"{len(ok)} ratios (" + "; ".join(
                                f"{ratio_label(r)}: {ma:.3f} vs {mb:.3f}, p = {_p(p)}"
                                for r, ma, mb, p in low) + ")")
        if high:
            mean_gap = np.mean([mb - ma for _, ma, mb, _ in low]) if low else math.nan
            ok = [(math.isfinite(p) and p >= ALPHA)
                  or (math.isfinite(mean_gap) and abs(mb - ma) <= GAP_CLOSED * abs(mean_gap))
                  for _, ma, mb, p in high]
            b_ok = all(ok)
            evidence.append(f"{c.label}, ≥ 95 %: gap (colour − grey) closed at {sum(ok)} of "
                            f"{len(ok)} ratios ("
                            + "; ".join(f"{ratio_label(r)}: gap {mb - ma:+.3f}, p = {_p(p)}"
                                        for r, ma, mb, p in high)
                            + (f"; mean gap at 0–65 % {mean_gap:+.3f})" if low else ")"))
        parts = [x for x in (a_ok, b_ok) if x is not None]
        if len(parts) == 2 and all(parts):
            verdicts.append(REPRODUCED)
        elif any(parts):
            verdicts.append(PARTLY)  # one half holds, or the other half is not testable
        else:
            verdicts.append(NOT_REPRODUCED)
        if len(parts) == 1:
            evidence.append(f"{c.label}: the {'closing gap' if low else 'grey cost'} is not "
                            f"testable (no ratios {'≥ 95' if low else 'in 0–65'} %)")
    if not verdicts:
        return Finding(6, CLAIMS[6], NOT_TESTABLE,
                       ["no greyscale-vs-colour pair of scenarios with map in these results"])
    for c in tested:
        cells = _cells(ctx, "adv_map", c, 0.0, 0.65)
        if cells:
            good = sum(1 for _, ma, mb, p in cells if ma < mb and _significant(p))
            evidence.append(f"context, adversarial mAP, {c.label}: grey lower with p < {ALPHA} "
                            f"at {good} of {len(cells)} ratios in 0–65 %")
    if all(v == REPRODUCED for v in verdicts):
        verdict = REPRODUCED
    elif all(v == NOT_REPRODUCED for v in verdicts):
        verdict = NOT_REPRODUCED
    else:
        verdict = PARTLY
    return Finding(6, CLAIMS[6], verdict, evidence)


def findings(df: pd.DataFrame, std: StdKind = "population") -> list[Finding]:
    """One verdict per paper finding (see the module docstring for the rules)."""
    comps = comparisons(df)
    present = metrics_present(df, ANOVA_METRICS)
    ctx = _Context(df, std, comps, {m: anova(df, m, comps) for m in present},
                   {m: summary(df, m, std) for m in present})
    return [_finding1(ctx), _finding2(ctx), _finding3(ctx), _finding4(ctx), _finding5(ctx),
            _finding6(ctx)]


# ------------------------------------------------------------------------------------- report

RULES = {
    1: "per scenario: no rise of the mean between adjacent ratios beyond the larger of their std "
       "devs; last ratio below first with p < 0.05; faster loss per ratio point from the largest "
       "ratio ≤ 60 % to the largest ≤ 90 % than before it. All scenarios: reproduced; some fall "
       "significantly (or the sharpness cannot be tested): partly.",
    2: "each DeepLIFT-vs-HYDRA comparison: DeepLIFT's mean higher with p < 0.05 at every ratio "
       "in 50–85 %; both granularities needed for 'reproduced'.",
    3: "each unstructured-vs-structured comparison: unstructured's mean higher with p < 0.05 at "
       "every ratio in 25–90 %; both score methods needed for 'reproduced'.",
    4: f"each unstructured-vs-structured comparison: structured latency ≤ {HALF_LATENCY}× "
       "unstructured with p < 0.05 at every ratio ≥ 65 % (significantly faster but by less: "
       "partly); both score methods needed for 'reproduced'.",
    5: "each DeepLIFT-vs-HYDRA comparison: latency p ≥ 0.05 at more than half of the ratios; "
       "both granularities needed for 'reproduced'.",
    6: "grey's mean lower with p < 0.05 at every ratio in 0–65 %, and at every ratio ≥ 95 % "
       f"p ≥ 0.05 or a gap ≤ {GAP_CLOSED}× the mean 0–65 % gap. Both: reproduced; one: partly.",
}
_OWNED = ("report.md", "findings.json", "tables", "anova", "figures")


def _fmt(v: float, metric: str) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    if metric.startswith("latency"):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    if metric in ("macs", "flops", "params_nonzero", "params_total", "bytes_stored"):
        return f"{v:.4g}" if abs(v) >= 1e6 else f"{v:.0f}"
    if metric == "compression_ratio":
        return f"{v:.2f}"
    if "map" in metric or metric.startswith(("ap", "adv_ap")) or metric == "sparsity":
        return f"{v:.3f}"
    return f"{v:.4g}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: bool = True) -> str:
    # Written by hand: pandas' to_markdown needs tabulate, a dependency for a dozen lines.
    rest = "---:" if numeric else ":---"
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + [rest] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_markdown(table: pd.DataFrame, metric: str) -> str:
    """A :func:`runs_table` as markdown: values as the metric reads best, std dev as ``8.0e-04``."""
    rows = []
    for name, values in table.iterrows():
        spread = str(name).startswith("std dev")
        rows.append([str(name)] + [("n/a" if not math.isfinite(v) else f"{v:.1e}") if spread
                                   else _fmt(v, metric) for v in values])
    return _md_table(["pruning ratio", *table.columns], rows)


def anova_markdown(an: Anova) -> str:
    """p-values in the paper's notation (``1.03e-01``), those below ``ALPHA`` in bold."""
    rows = [[label] + [("**" + _p(p) + "**") if _significant(p) else _p(p) for p in values]
            for label, values in an.pvalues.iterrows()]
    text = _md_table(["comparison", *[ratio_label(r) for r in an.pvalues.columns]], rows)
    if an.notes:
        text += "\nNotes: " + "; ".join(an.notes) + ".\n"
    return text


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(float_format="%.10g", lineterminator="\n").encode()


def _runs_per_cell(df: pd.DataFrame, scenario: str) -> str:
    counts = df[df["scenario"] == scenario].groupby("ratio")["run"].nunique()
    lo, hi = int(counts.min()), int(counts.max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def report(results: Results, out_dir: str | os.PathLike, *, std: StdKind = "population",
           metrics: Sequence[str] | None = None) -> dict:
    """Write the full statistics report for a results table into ``out_dir``.

    Everything is computed in memory first and then moved into place, so an error never leaves
    a half-written report. In an existing folder only the report's own entries (``report.md``,
    ``findings.json``, ``tables/``, ``anova/``, ``figures/``) are replaced.

    Args:
        results: a DataFrame, a results CSV path, or several (concatenated).
        out_dir: the report folder; created with its parents when absent.
        std: ``"population"`` (``ddof=0``, the paper's) or ``"sample"`` (``ddof=1``) standard
            deviations, for tables, error bars and findings.
        metrics: the metrics to tabulate (default: those of ``TABLE_METRICS`` present).

    Returns:
        Paths written (``report``, ``findings_json``, ``tables``, ``anova``, ``figures``) and
        ``findings``: a list of ``{"number", "claim", "verdict", "evidence"}``.
    """
    _ddof(std)
    sources = [results] if isinstance(results, pd.DataFrame | str | os.PathLike) else results
    df = load_results(results)
    names = [_source_name(s) for s in sources]
    metrics = metrics_present(df, TABLE_METRICS if metrics is None else metrics)
    scenarios = sorted(df["scenario"].unique())
    ratios = sorted(df["ratio"].unique())
    files: dict[str, bytes] = {}
    out = Path(out_dir)

    # Per-scenario tables, CSV and markdown.
    table_md: dict[str, list[str]] = {s: [] for s in scenarios}
    for s in scenarios:
        for m in metrics:
            t = runs_table(df, s, m, std)
            if t.empty:
                continue
            stem = f"tables/{_safe(s)}__{_safe(m)}"
            md = table_markdown(t, m)
            files[f"{stem}.csv"] = _csv(t)
            files[f"{stem}.md"] = f"# {s}: {LABELS.get(m, m)}\n\n{md}".encode()
            table_md[s] += [f"#### {LABELS.get(m, m)}", md, f"[CSV]({stem}.csv)"]
        for prefix in _PER_CLASS:
            t = per_class_table(df, s, prefix)
            if not t.empty:
                stem = f"tables/{_safe(s)}__per_class_{prefix}"
                files[f"{stem}.csv"] = _csv(t)
                table_md[s].append(f"Mean per-class `{prefix}` by ratio: [CSV]({stem}.csv)")

    # ANOVA.
    comps = comparisons(df)
    anovas = {m: anova(df, m, comps) for m in metrics_present(df, ANOVA_METRICS)}
    for m, an in anovas.items():
        if comps:
            t = an.pvalues.copy()
            t.columns = [ratio_label(r) for r in t.columns]
            t.index.name = "comparison"
            files[f"anova/{_safe(m)}.csv"] = _csv(t)

    # Figures.
    figs = figures(df, std)
    for stem, fig in figs.items():
        files[f"figures/{stem}.png"] = figure_png(fig)

    found = findings(df, std)
    found_json = [{"number": f.number, "claim": f.claim, "verdict": f.verdict,
                   "evidence": f.evidence} for f in found]
    files["findings.json"] = (json.dumps(found_json, indent=2, ensure_ascii=False)
                              + "\n").encode()
    md = _report_markdown(df, names, scenarios, ratios, metrics, std, comps, anovas, figs,
                          found, table_md)
    files["report.md"] = md.encode()
    _publish(files, out)
    return {
        "out_dir": out,
        "report": out / "report.md",
        "findings_json": out / "findings.json",
        "tables": [out / k for k in files if k.startswith("tables/")],
        "anova": [out / k for k in files if k.startswith("anova/")],
        "figures": [out / k for k in files if k.startswith("figures/")],
        "findings": found_json,
    }


_FIG_CAPTIONS = {
    "fig1a_map": "Fig. 1a: mean mAP vs pruning ratio",
    "fig1b_latency": "Fig. 1b: mean latency vs pruning ratio",
    "fig2a_grey_map": "Fig. 2a: greyscale vs colour, mAP",
    "fig2b_grey_latency": "Fig. 2b: greyscale vs colour, latency",
    "fig3_adversarial": "Clean vs adversarial mAP",
}


def _report_markdown(df: pd.DataFrame, names: list[str], scenarios: list[str],
                     ratios: list[float], metrics: list[str], std: StdKind,
                     comps: list[Comparison], anovas: dict[str, Anova], figs: dict,
                     found: list[Finding], table_md: dict[str, list[str]]) -> str:
    attrs = _scenario_attributes(df)
    blocks = ["# prunekit statistics report", "## Input"]
    blocks.append(f"- results: {', '.join(f'`{n}`' for n in names)} ({len(df)} rows)\n"
                  f"- scenarios: {len(scenarios)}; pruning ratios: "
                  f"{', '.join(ratio_label(r) for r in ratios)}\n"
                  f"- metrics: {', '.join(f'`{m}`' for m in metrics)}\n"
                  f"- standard deviation: {std} (ddof = {_ddof(std)}); ANOVA: one-way, "
                  f"`scipy.stats.f_oneway` over the runs of each group, α = {ALPHA}")
    blocks.append(_md_table(
        ["scenario", "granularity", "score method", "images", "runs per cell"],
        [[s, attrs[s]["granularity"] or "?", attrs[s]["method"] or "?",
          attrs[s]["colour"] or "?", _runs_per_cell(df, s)] for s in scenarios], numeric=False))

    blocks.append("## Findings")
    blocks.append("Each of the paper's findings, judged on these results by the rules under "
                  "[How the verdicts are decided](#how-the-verdicts-are-decided).")
    blocks.append(_md_table(["#", "paper's finding", "verdict"],
                            [[str(f.number), f.claim, f"**{f.verdict}**"] for f in found],
                            numeric=False))
    for f in found:
        blocks.append(f"### {f.number}. {f.claim}: {f.verdict}")
        blocks.append("\n".join(f"- {line}" for line in f.evidence))

    if figs:
        blocks.append("## Figures")
        blocks += [f"![{_FIG_CAPTIONS[stem]}](figures/{stem}.png)" for stem in figs]

    blocks.append("## One-way ANOVA p-values")
    if not comps:
        blocks.append("No two scenarios differ in exactly one of score method, granularity and "
                      "colour, so there is nothing to compare.")
    else:
        blocks.append(f"p < {ALPHA} in bold; n/a where the test is undefined.")
        paper = {"map": "the paper's Tables I and III", "latency_ms":
                 "the paper's Tables II and IV", "adv_map": "not in the paper"}
        for m, an in anovas.items():
            blocks.append(f"### {LABELS.get(m, m)} ({paper.get(m, m)})")
            blocks.append(anova_markdown(an))

    blocks.append("## Per-scenario tables")
    blocks.append(f"Rows are runs; `{std_label(std)}` is the standard deviation over runs.")
    for s in scenarios:
        blocks.append(f"### {s}")
        blocks += table_md[s]

    blocks.append("## How the verdicts are decided")
    blocks.append(f"Clean `map` (`latency_ms` for 4 and 5); significant means one-way ANOVA "
                  f"p < {ALPHA}; a cell without a p-value never counts as significant. For 2–5: "
                  f"all comparisons pass at every ratio in range: reproduced; some ratio passes "
                  f"(or one of the paper's comparisons is absent): partly reproduced; none: not "
                  f"reproduced; scenarios or metric absent: not testable here.")
    blocks.append("\n".join(f"{n}. {rule}" for n, rule in RULES.items()))
    return "\n\n".join(b.strip("\n") for b in blocks) + "\n"


def _publish(files: dict[str, bytes], out_dir: Path) -> None:
    """Move a finished report into ``out_dir``: a rename of the whole folder when it is new,
    else a rename per owned entry (entries the report no longer has are removed)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PrunekitError(f"{out_dir} is a file; give a folder for the report (-o report/)")
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))
    try:
        for rel, data in files.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        if not out_dir.exists():
            os.replace(tmp, out_dir)
            return
        old = tmp / ".old"
        old.mkdir()
        for entry in _OWNED:
            dest = out_dir / entry
            if dest.exists() or dest.is_symlink():
                os.replace(dest, old / entry)
            if (tmp / entry).exists():
                os.replace(tmp / entry, dest)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
