"""The markdown report: assembling it and writing it into a folder.

:func:`report` loads a results table, computes the per-scenario tables, ANOVA p-values, figures
and findings, renders them as ``report.md`` (with :func:`table_markdown` and
:func:`anova_markdown`) plus CSV, PNG and ``findings.json`` files, all in memory, and then moves
the finished report into place at once, so that an error never leaves a half-written report and
only the report's own entries of an existing folder are replaced.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from prunekit.errors import PrunekitError
from prunekit.stats.figures import figure_png, figures
from prunekit.stats.findings import ALPHA, Finding, _p
from prunekit.stats.loading import (
    _PER_CLASS,
    ANOVA_METRICS,
    LABELS,
    TABLE_METRICS,
    Results,
    _source_name,
    load_results,
    metrics_present,
)
from prunekit.stats.tables import (
    StdKind,
    _ddof,
    md_table,
    per_class_table,
    ratio_label,
    runs_table,
    std_label,
)
from prunekit.stats.tests import Anova, Comparison, _scenario_attributes, anova, comparisons
from prunekit.stats.verdicts import (
    findings_json,
    findings_markdown,
    judge,
    most_runs,
    rules_markdown,
    study,
)

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


def table_markdown(table: pd.DataFrame, metric: str) -> str:
    """A :func:`runs_table` as markdown: values as the metric reads best, std dev as ``8.0e-04``."""
    rows = []
    for name, values in table.iterrows():
        spread = str(name).startswith("std dev")
        rows.append([str(name)] + [("n/a" if not math.isfinite(v) else f"{v:.1e}") if spread
                                   else _fmt(v, metric) for v in values])
    return md_table(["pruning ratio", *table.columns], rows)


def anova_markdown(an: Anova) -> str:
    """p-values in the paper's notation (``1.03e-01``), those below ``ALPHA`` in bold."""
    rows = [[label] + [("**" + _p(p) + "**") if _significant(p) else _p(p) for p in values]
            for label, values in an.pvalues.iterrows()]
    text = md_table(["comparison", *[ratio_label(r) for r in an.pvalues.columns]], rows)
    if an.notes:
        text += "\nNotes: " + "; ".join(an.notes) + ".\n"
    return text


def _significant(p: float) -> bool:
    return math.isfinite(p) and p < ALPHA


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
        ``findings``: a list of dicts (:meth:`~prunekit.stats.findings.Finding.as_dict`, with
        ``seed_verdict``, the verdict on the paper's own data).
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

    s = study("paper")
    found, seed = judge(s, df)
    found_json, files["findings.json"] = findings_json(found, seed)
    md = _report_markdown(df, names, scenarios, ratios, metrics, std, comps, anovas, figs,
                          found, seed, table_md)
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
                     found: list[Finding], seed: list[Finding],
                     table_md: dict[str, list[str]]) -> str:
    attrs = _scenario_attributes(df)
    blocks = ["# prunekit statistics report", "## Input"]
    blocks.append(f"- results: {', '.join(f'`{n}`' for n in names)} ({len(df)} rows)\n"
                  f"- scenarios: {len(scenarios)}; pruning ratios: "
                  f"{', '.join(ratio_label(r) for r in ratios)}\n"
                  f"- metrics: {', '.join(f'`{m}`' for m in metrics)}\n"
                  f"- standard deviation: {std} (ddof = {_ddof(std)}); ANOVA: one-way, "
                  f"`scipy.stats.f_oneway` over the runs of each group, α = {ALPHA}")
    blocks.append(md_table(
        ["scenario", "granularity", "score method", "images", "runs per cell"],
        [[s, attrs[s]["granularity"] or "?", attrs[s]["method"] or "?",
          attrs[s]["colour"] or "?", _runs_per_cell(df, s)] for s in scenarios], numeric=False))

    rules = study("paper")
    blocks += findings_markdown(rules, found, seed, most_runs(df))

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
    blocks.append(rules_markdown(rules))
    return "\n\n".join(b.strip("\n") for b in blocks) + "\n"


def _publish(files: dict[str, bytes], out_dir: Path,
             owned: Sequence[str] = _OWNED) -> None:
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
        for entry in owned:
            dest = out_dir / entry
            if dest.exists() or dest.is_symlink():
                os.replace(dest, old / entry)
            if (tmp / entry).exists():
                os.replace(tmp / entry, dest)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
