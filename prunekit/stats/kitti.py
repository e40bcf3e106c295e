"""The second study's report (`prunekit stats --study kitti`, `make kitti-study`).

From the table `make kitti-study` collects (:mod:`prunekit.stats.findings.kitti` describes its
columns) it writes ``report.md`` with the input, one verdict per finding of the study with the
numbers behind it, the figures and per-scenario tables; ``findings.json``; ``tables/`` (one CSV
per scenario: mean and standard deviation over runs per metric and ratio) and ``figures/``:

* ``accuracy_map``, ``accuracy_map50``: mAP against ratio, one panel per method (L1 filter,
  magnitude weight), one colour per model, dashed straight after pruning and solid after the
  fine-tune, error bars ±1 std dev over runs;
* ``retained_map``: the same as a share of each model's unpruned mAP (finding 5);
* ``latency``, ``macs``, ``bytes``: latency, MACs and checkpoint bytes against ratio;
* ``difficulty``: mAP50 by KITTI difficulty after the fine-tune, when the table has it.

The figures and the publishing (everything in memory, then renamed into place) are those of the
first study's report (:mod:`prunekit.stats.figures`, :mod:`prunekit.stats.report`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from prunekit.stats.figures import _COLOURS, _MARKERS, _new_figure, _ratio_axis, figure_png
from prunekit.stats.findings import ALPHA, VERSION
from prunekit.stats.findings.kitti import prepare
from prunekit.stats.loading import LABELS, Results, _source_name, load_results
from prunekit.stats.report import (
    _fmt,
    _publish,
    _runs_per_cell,
    _safe,
)
from prunekit.stats.tables import StdKind, _ddof, md_table, ratio_label, std_label
from prunekit.stats.verdicts import (
    findings_json,
    findings_markdown,
    judge,
    most_runs,
    rules_markdown,
    study,
)

OWNED = ("report.md", "findings.json", "tables", "figures")
_METHODS = {"filter": "L1 filter pruning (compacted)", "weight": "magnitude weight pruning"}
_STATES = {"pruned": "straight after pruning", "finetuned": "after the fine-tune"}
_STATE_STYLE = {"pruned": {"linestyle": "--", "alpha": 0.8}, "finetuned": {"linestyle": "-"}}
_DIFFICULTY_STYLE = {"easy": "-", "moderate": "--", "hard": ":"}
#: Metrics tabulated per scenario, in order (those present).
TABLE_METRICS = ("map", "map50", "map75", "ap.Car", "ap.Pedestrian", "ap.Cyclist", "ap50.Car",
                 "ap50.Pedestrian", "ap50.Cyclist", "map.easy", "map.moderate", "map.hard",
                 "map50.easy", "map50.moderate", "map50.hard", "latency_ms", "macs",
                 "params_total", "params_nonzero", "bytes_stored", "compression_ratio")
_FIGURES = {
    "accuracy_map": "mAP@[.5:.95] vs pruning ratio",
    "accuracy_map50": "mAP@.5 vs pruning ratio",
    "retained_map": "share of the unpruned mAP retained vs pruning ratio",
    "latency": "latency per image vs pruning ratio",
    "macs": "MACs vs pruning ratio",
    "bytes": "checkpoint bytes vs pruning ratio",
    "difficulty": "mAP@.5 by KITTI difficulty after the fine-tune",
}


def _label(metric: str) -> str:
    if metric == "retained.map":
        return "share of unpruned mAP"
    if metric == "retained.adv_map":
        return "share of unpruned adversarial mAP"
    if metric == "bytes_mb":
        return "checkpoint (MB)"
    if metric == "macs_g":
        return "GMACs per image"
    return LABELS.get(metric, metric)


def _panel_figure(df: pd.DataFrame, metric: str, title: str, std: StdKind,
                  states: Sequence[str] = ("pruned", "finetuned"), *, series: str = "state",
                  names: dict[str, str] = _STATES,
                  styles: dict[str, dict] = _STATE_STYLE):
    """One panel per method; a curve per model and ``series`` value (``states``, named by
    ``names`` and drawn in ``styles``) with ±1 std dev error bars."""
    data = df.dropna(subset=[metric])
    methods = [m for m in _METHODS if (data["granularity"] == m).any()]
    if not methods:
        return None
    models = sorted(data["model"].unique())
    fig, axes = _new_figure(1, len(methods), size=(5.2 * len(methods), 4.6))
    for ax, method in zip(axes[0], methods, strict=True):
        sub = data[data["granularity"] == method]
        ratios = sorted(sub["ratio"].unique())
        for i, model in enumerate(models):
            for j, state in enumerate(states):
                cell = sub[(sub["model"] == model) & (sub[series] == state)]
                if cell.empty:
                    continue
                g = cell.groupby("ratio")[metric]
                mean, sd, n = g.mean(), g.std(ddof=_ddof(std)).fillna(0), int(g.count().max())
                shift = (i * len(states) + j - 1.5) * 0.35
                ax.errorbar(mean.index * 100 + shift, mean, yerr=sd, capsize=3,
                            color=_COLOURS[i % len(_COLOURS)], marker=_MARKERS[i % len(_MARKERS)],
                            markersize=5, linewidth=1.5, elinewidth=1.1,
                            label=f"{model}, {names[state]} (n={n})", **styles[state])
        _ratio_axis(ax, ratios)
        ax.set_title(_METHODS[method], fontsize=10)
        ax.set_ylabel(_label(metric))
        ax.tick_params(labelleft=True)
    axes[0][0].legend(fontsize=7, title=f"error bars: ±1 {std} std dev over runs",
                      title_fontsize=7)
    fig.suptitle(title, fontsize=11)
    return fig


def _difficulty_figure(df: pd.DataFrame, std: StdKind):
    cols = [f"map50.{d}" for d in _DIFFICULTY_STYLE if f"map50.{d}" in df.columns]
    data = df[df["state"] == "finetuned"]
    if not cols or data[cols].isna().all().all():
        return None
    methods = [m for m in _METHODS if (data["granularity"] == m).any()]
    models = sorted(data["model"].unique())
    fig, axes = _new_figure(1, len(methods), size=(5.2 * len(methods), 4.6))
    for ax, method in zip(axes[0], methods, strict=True):
        sub = data[data["granularity"] == method]
        for i, model in enumerate(models):
            for col in cols:
                g = sub[sub["model"] == model].groupby("ratio")[col]
                if g.count().sum() == 0:
                    continue
                level = col.split(".", 1)[1]
                ax.errorbar(g.mean().index * 100, g.mean(), yerr=g.std(ddof=_ddof(std)).fillna(0),
                            capsize=3, color=_COLOURS[i % len(_COLOURS)],
                            marker=_MARKERS[i % len(_MARKERS)], markersize=4,
                            linestyle=_DIFFICULTY_STYLE[level], label=f"{model}, {level}")
        _ratio_axis(ax, sorted(sub["ratio"].unique()))
        ax.set_title(_METHODS[method], fontsize=10)
        ax.set_ylabel("mAP@.5 at the level (harder objects ignored)")
        ax.tick_params(labelleft=True)
    axes[0][0].legend(fontsize=7, title=f"after the fine-tune; ±1 {std} std dev",
                      title_fontsize=7)
    fig.suptitle(_FIGURES["difficulty"], fontsize=11)
    return fig


def figures(df: pd.DataFrame, std: StdKind = "population") -> dict[str, object]:
    """The report's figures by file stem (those the data allows)."""
    df = df.assign(bytes_mb=df["bytes_stored"] / 1e6 if "bytes_stored" in df else None,
                   macs_g=df["macs"] / 1e9 if "macs" in df else None)
    plans = {"accuracy_map": "map", "accuracy_map50": "map50", "retained_map": "retained.map",
             "latency": "latency_ms", "macs": "macs_g", "bytes": "bytes_mb"}
    out = {}
    for stem, metric in plans.items():
        if metric in df.columns and df[metric].notna().any():
            fig = _panel_figure(df, metric, _FIGURES[stem], std)
            if fig is not None:
                out[stem] = fig
    fig = _difficulty_figure(df, std)
    if fig is not None:
        out["difficulty"] = fig
    return out


def scenario_table(df: pd.DataFrame, scenario: str, std: StdKind,
                   tabulated: Sequence[str] = TABLE_METRICS) -> pd.DataFrame:
    """Mean and std dev over runs (rows ``<metric>`` and ``<metric> std``) of each
    ``tabulated`` metric per ratio (columns)."""
    sub = df[df["scenario"] == scenario]
    metrics = [m for m in tabulated if m in sub.columns and sub[m].notna().any()]
    g = sub.groupby("ratio")[metrics]
    mean, sd = g.mean().T, g.std(ddof=_ddof(std)).T
    rows = {}
    for m in metrics:
        rows[m] = mean.loc[m]
        rows[f"{m} std"] = sd.loc[m]
    table = pd.DataFrame(rows).T
    table.columns = [ratio_label(r) for r in table.columns]
    return table


def _table_md(table: pd.DataFrame) -> str:
    rows = []
    for name, values in table.iterrows():
        if name.endswith(" std"):
            continue
        sd = table.loc[f"{name} std"]
        rows.append([_label(name)] + [
            _fmt(v, name) + ("" if pd.isna(s) or s == 0 else f" ± {_fmt(s, name)}")
            for v, s in zip(values, sd, strict=True)])
    return md_table(["metric"] + list(table.columns), rows)


def report(results: Results, out_dir: str | os.PathLike, *,
           std: StdKind = "population") -> dict:
    """Write the second study's report into ``out_dir`` (module docstring).

    Returns:
        Paths written (``report``, ``findings_json``, ``tables``, ``figures``) and ``findings``:
        a list of ``{"number", "claim", "verdict", "evidence"}``.
    """
    from prunekit.errors import DataError

    _ddof(std)
    sources = [results] if isinstance(results, pd.DataFrame | str | os.PathLike) else results
    df = load_results(results)
    missing = [c for c in ("family", "finetune_steps", "map") if c not in df.columns]
    if missing:
        raise DataError(f"the results have no {missing[0]!r} column: this is not a table from "
                        f"`make kitti-study` (use `prunekit stats` without --study for the "
                        f"first study's grid)")
    return write_report(prepare(df), out_dir, sources, "kitti", std)


def write_report(df: pd.DataFrame, out_dir: str | os.PathLike, sources: Sequence, name: str,
                 std: StdKind, *, shown: pd.DataFrame | None = None,
                 tabulated: Sequence[str] = TABLE_METRICS, draw=None, markdown=None) -> dict:
    """A later study's report from its prepared table: per-scenario tables (of ``tabulated``),
    figures (``draw``), the verdicts of study ``name`` and ``report.md`` (``markdown``),
    published into ``out_dir`` (this study's by default). ``shown``: the table the tables and
    figures are drawn from (default ``df``; the verdicts always judge ``df``)."""
    shown = df if shown is None else shown
    draw, markdown = draw or figures, markdown or _markdown
    files: dict[str, bytes] = {}
    scenarios = sorted(df["scenario"].unique())
    table_md = {}
    for s in scenarios:
        t = scenario_table(shown, s, std, tabulated)
        files[f"tables/{_safe(s)}.csv"] = t.to_csv(float_format="%.6g").encode()
        table_md[s] = _table_md(t)
    figs = draw(shown, std)
    for stem, fig in figs.items():
        files[f"figures/{stem}.png"] = figure_png(fig)
    found, seed = judge(study(name), df)
    found_json, files["findings.json"] = findings_json(found, seed)
    files["report.md"] = markdown(df, [_source_name(s) for s in sources], scenarios, std, figs,
                                  found, seed, table_md).encode()
    out = Path(out_dir)
    _publish(files, out, OWNED)
    return {"out_dir": out, "report": out / "report.md",
            "findings_json": out / "findings.json",
            "tables": [out / k for k in files if k.startswith("tables/")],
            "figures": [out / k for k in files if k.startswith("figures/")],
            "findings": found_json}


def _markdown(df: pd.DataFrame, names: list[str], scenarios: list[str], std: StdKind,
              figs: dict, found: list, seed: list, table_md: dict[str, str]) -> str:
    blocks = ["# The second study: Deformable DETR pruned on KITTI", "## Input"]
    ratios = sorted(df["ratio"].unique())
    blocks.append(f"- results: {', '.join(f'`{n}`' for n in names)} ({len(df)} rows)\n"
                  f"- pruning ratios: {', '.join(ratio_label(r) for r in ratios)}\n"
                  f"- standard deviation: {std} (ddof = {_ddof(std)}); verdicts: the declared "
                  f"rules, version {VERSION} (α = {ALPHA}; below)")
    rows = []
    for s in scenarios:
        sub = df[df["scenario"] == s]
        steps = int(sub["finetune_steps"].max())
        rows.append([s, str(sub["family"].iloc[0]), _METHODS.get(sub["granularity"].iloc[0], "?"),
                     f"{steps} steps" if steps else "none", _runs_per_cell(df, s)])
    blocks.append(md_table(["scenario", "family", "pruning", "fine-tune", "runs per cell"],
                            rows, numeric=False))
    blocks += findings_markdown(study("kitti"), found, seed, most_runs(df))
    if figs:
        blocks.append("## Figures")
        blocks += [f"![{_FIGURES[stem]}](figures/{stem}.png)" for stem in figs]
    blocks.append("## Per-scenario tables")
    blocks.append(f"Mean over runs ± {std_label(std)} (none shown: one run, or all equal). "
                  f"Per-scenario CSVs under `tables/`.")
    for s in scenarios:
        blocks.append(f"### {s}")
        blocks.append(table_md[s])
    blocks.append("## How the verdicts are decided")
    blocks.append(rules_markdown(study("kitti")))
    return "\n\n".join(b.strip("\n") for b in blocks) + "\n"
