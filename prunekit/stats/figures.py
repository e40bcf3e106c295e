"""The report's matplotlib figures: mean metric against pruning ratio with std dev error bars.

:func:`figure_vs_ratio` draws one curve per scenario (the paper's Fig. 1a/1b and, for the
greyscale-vs-colour scenarios, Fig. 2a/2b), :func:`figure_clean_vs_adversarial` one panel per
scenario with clean and adversarial mAP, and :func:`figures` collects those the data allows by
file stem. Figures are bare Agg ``Figure`` objects (pyplot's backend is never touched) with a
fixed size and resolution, and :func:`figure_png` renders them without date or software
metadata, so the same input gives the same PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from prunekit.stats.loading import LABELS, metrics_present
from prunekit.stats.tables import StdKind, ratio_label, summary
from prunekit.stats.tests import comparisons

# Figures: fixed size and resolution so that the same input gives the same bytes.
_FIG_SIZE = (8.0, 5.0)
_DPI = 110
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
            "#17becf", "#7f7f7f", "#bcbd22")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
_LINESTYLES = ("-", "--", "-.", ":")


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
    # The paper's Figs. 1a and 2a are mAP at its confidence threshold, the verdicts' metric.
    mp = "map_conf05" if metrics_present(df, ("map_conf05",)) else "map"
    specs = [
        ("fig1a_map", mp, None, f"Fig. 1a: mean {LABELS[mp]} vs pruning ratio, all scenarios"),
        ("fig1b_latency", "latency_ms", None,
         "Fig. 1b: mean latency vs pruning ratio, all scenarios"),
    ]
    if grey:
        specs += [("fig2a_grey_map", mp, grey, f"Fig. 2a: greyscale vs colour, mean {LABELS[mp]}"),
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
