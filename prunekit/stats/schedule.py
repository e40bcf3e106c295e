"""The schedule study's report (`prunekit stats --study schedule`, `make schedule-study`).

From the table `make schedule-study` collects (:mod:`prunekit.stats.findings.schedule` describes
its columns) it writes ``report.md`` with the input, one verdict per question of the study with
the numbers behind it, the figures and per-scenario tables; ``findings.json``; ``tables/`` (one
CSV per scenario: mean and standard deviation over runs per metric and ratio) and ``figures/``:

* ``accuracy_map``, ``adversarial_map``: clean mAP and mAP under PGD against ratio, one panel per
  granularity (unstructured weights, compacted filters), one colour per model, one line style
  per schedule, error bars ±1 std dev over runs;
* ``retained_map``, ``retained_adv_map``: the same as shares of each model's unpruned control;
* ``macs``: MACs against ratio (the sensitivity-allocated models must not cost more than the
  uniform ones).

Tables and figures are drawn by the second study's helpers (:mod:`prunekit.stats.kitti`), the
publishing (everything in memory, then renamed into place) is the first study's.
"""

from __future__ import annotations

import os

import pandas as pd

from prunekit.stats.findings import ALPHA, VERSION
from prunekit.stats.findings.schedule import prepare
from prunekit.stats.kitti import _METHODS, _panel_figure, write_report
from prunekit.stats.loading import Results, load_results
from prunekit.stats.report import _runs_per_cell
from prunekit.stats.tables import StdKind, _ddof, md_table, ratio_label, std_label
from prunekit.stats.verdicts import (
    findings_markdown,
    most_runs,
    rules_markdown,
    study,
)

SCHEDULES = {"one-shot": "one-shot", "linear": "linear schedule", "cubic": "cubic schedule",
             "sensitivity": "sensitivity-allocated"}
_STYLE = {"one-shot": {"linestyle": "--", "alpha": 0.8}, "linear": {"linestyle": "-."},
          "cubic": {"linestyle": "-"}, "sensitivity": {"linestyle": ":"}}
TABLE_METRICS = ("map", "map50", "adv_map", "adv_map50", "retained.map", "retained.adv_map",
                 "map_conf05", "adv_map_conf05", "latency_ms", "macs", "params_total",
                 "params_nonzero", "bytes_stored")
_FIGURES = {
    "accuracy_map": ("map", "mAP@[.5:.95] vs pruning ratio"),
    "adversarial_map": ("adv_map", "mAP@[.5:.95] under PGD vs pruning ratio"),
    "retained_map": ("retained.map", "share of the unpruned control's mAP vs pruning ratio"),
    "retained_adv_map": ("retained.adv_map", "share of the unpruned control's adversarial "
                                             "mAP vs pruning ratio"),
    "macs": ("macs_g", "MACs vs pruning ratio"),
}


def with_controls(df: pd.DataFrame) -> pd.DataFrame:
    """The table with each model's control (its ratio-0 rows, fine-tuned once per run) repeated
    in every scenario of the model that lacks one: what the figures and tables show beside each
    schedule. The verdicts take the table as it is."""
    control = df[df["ratio"] == 0]
    extra = []
    for (model, g, schedule), sub in df.groupby(["model", "granularity", "schedule"]):
        if (sub["ratio"] == 0).any():
            continue
        rows = control[control["model"] == model].drop_duplicates("run")
        extra.append(rows.assign(granularity=g, schedule=schedule,
                                 scenario=f"{model}.{g}.{schedule}"))
    return pd.concat([df, *extra], ignore_index=True) if extra else df


def figures(df: pd.DataFrame, std: StdKind = "population") -> dict[str, object]:
    """The report's figures by file stem (those the data allows)."""
    df = df.assign(macs_g=df["macs"] / 1e9 if "macs" in df else None)
    schedules = [s for s in SCHEDULES if (df["schedule"] == s).any()]
    out = {}
    for stem, (metric, title) in _FIGURES.items():
        if metric in df.columns and df[metric].notna().any():
            fig = _panel_figure(df, metric, title, std, schedules, series="schedule",
                                names=SCHEDULES, styles=_STYLE)
            if fig is not None:
                out[stem] = fig
    return out


def report(results: Results, out_dir: str | os.PathLike, *,
           std: StdKind = "population") -> dict:
    """Write the schedule study's report into ``out_dir`` (module docstring).

    Returns:
        Paths written (``report``, ``findings_json``, ``tables``, ``figures``) and ``findings``:
        a list of ``{"number", "claim", "verdict", "evidence"}``.
    """
    from prunekit.errors import DataError

    _ddof(std)
    sources = [results] if isinstance(results, pd.DataFrame | str | os.PathLike) else results
    df = load_results(results)
    missing = [c for c in ("family", "schedule", "granularity", "map") if c not in df.columns]
    if missing:
        raise DataError(f"the results have no {missing[0]!r} column: this is not a table from "
                        f"`make schedule-study` (give --study for the study that made it)")
    df = prepare(df)
    return write_report(df, out_dir, sources, "schedule", std, shown=with_controls(df),
                        tabulated=TABLE_METRICS, draw=figures, markdown=_markdown)


def _markdown(df: pd.DataFrame, names: list[str], scenarios: list[str], std: StdKind,
              figs: dict, found: list, seed: list, table_md: dict[str, str]) -> str:
    s = study("schedule")
    blocks = ["# The schedule study: one-shot, gradual and sensitivity-allocated pruning "
              "under attack", "## Input"]
    ratios = sorted(df["ratio"].unique())
    blocks.append(f"- results: {', '.join(f'`{n}`' for n in names)} ({len(df)} rows)\n"
                  f"- pruning ratios: {', '.join(ratio_label(r) for r in ratios)}\n"
                  f"- standard deviation: {std} (ddof = {_ddof(std)}); verdicts: the declared "
                  f"rules, version {VERSION} (α = {ALPHA}; below)")
    rows = []
    for name in scenarios:
        sub = df[df["scenario"] == name]
        schedule = str(sub["schedule"].iloc[0])
        rows.append([name, str(sub["family"].iloc[0]),
                     _METHODS.get(sub["granularity"].iloc[0], "?"),
                     SCHEDULES.get(schedule, schedule),
                     f"{int(sub['finetune_steps'].max())} steps", _runs_per_cell(df, name)])
    blocks.append(md_table(["scenario", "family", "pruning", "schedule", "fine-tune",
                            "runs per cell"], rows, numeric=False))
    blocks += findings_markdown(s, found, seed, most_runs(df))
    if figs:
        blocks.append("## Figures")
        blocks += [f"![{_FIGURES[stem][1]}](figures/{stem}.png)" for stem in figs]
    blocks.append("## Per-scenario tables")
    blocks.append(f"Mean over runs ± {std_label(std)} (none shown: one run, or all equal). "
                  f"Ratio 0 is each model's unpruned control, fine-tuned as long (once per "
                  f"run, shown in every scenario of the model). Per-scenario CSVs under "
                  f"`tables/`.")
    for name in scenarios:
        blocks.append(f"### {name}")
        blocks.append(table_md[name])
    blocks.append("## How the verdicts are decided")
    blocks.append(rules_markdown(s))
    return "\n\n".join(b.strip("\n") for b in blocks) + "\n"
