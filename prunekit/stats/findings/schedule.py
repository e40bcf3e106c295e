"""The schedule study's questions (`make schedule-study`), declared as rules.

Does pruning gradually while training (Zhu & Gupta's cubic schedule) keep at high ratios what
one-shot pruning loses, for detectors, and under attack? Do per-layer ratios chosen from a
sensitivity analysis beat one ratio everywhere at the same compute? The input is the study's
long table: one row per scenario × run × ratio, a scenario being
``<model>.<granularity>.<schedule>`` (``yolov3-small.weight.cubic``) with the columns ``family``,
``granularity`` (``weight``: unstructured; ``filter``: compacted filters), ``schedule``
(``one-shot``, ``cubic``, ``sensitivity``: one-shot at per-layer ratios allocated from a
sensitivity analysis for the MACs of the uniform ratio), and the metrics. Every schedule has
the same total fine-tuning steps; ratio 0 is the unpruned model fine-tuned as long (the control,
and what ``retained`` is a share of). :func:`prepare` adds ``model`` and ``retained.<metric>``.
"""

from __future__ import annotations

import math

import pandas as pd

from prunekit.stats.findings import (
    LATENCY_MARGIN,
    MAP_MARGIN,
    Cell,
    Finding,
    NotTestable,
    Part,
    Rule,
    Runs,
    judge_all,
    show_map,
    show_ratio,
    show_share,
)
from prunekit.stats.inference import Group, contrast, difference, exact
from prunekit.stats.tables import ratio_label

PREAMBLE = (
    "Each cell is a model pruned at a ratio and fine-tuned (under FGSM attack) for the same "
    "number of steps whatever its schedule: `one-shot` prunes before the first step, `cubic` "
    "raises the sparsity along Zhu & Gupta's schedule during the steps, `sensitivity` prunes "
    "once at per-layer ratios allocated from `prunekit sensitivity` for the MACs of the uniform "
    "ratio (since stop 34 no group beyond the next measured ratio above the uniform one). "
    "mAP is COCO's (confidence 0.001); adversarial mAP is under PGD (ε 0.05, step 0.02, "
    "5 steps). 'High' ratios are 75 % and above for weights, 50 % and above for filters.",
)
KEYS = ("model", "granularity", "schedule", "ratio")
HIGH = {"weight": 0.75, "filter": 0.5}
#: The paper's one-shot YOLOv3 kept these shares of its unpruned mAP (Table V, averages of
#: ten runs: 0.304 and 0.184 of 0.410).
PAPER_KEPT = {0.75: 0.304 / 0.410, 0.9: 0.184 / 0.410}


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """The study's table with ``model`` and ``retained.<metric>`` (a share of the same model's
    mean at ratio 0) added."""
    df = df.copy()
    df["model"] = df["scenario"].str.split(".").str[0]
    for metric in ("map", "adv_map"):
        if metric in df.columns:
            base = df[df["ratio"] == 0].groupby("model")[metric].mean()
            dense = df["model"].map(base)
            df[f"retained.{metric}"] = df[metric] / dense.where(dense > 0)
    return df


def _models(runs: Runs) -> list[str]:
    if "schedule" not in runs.df.columns:
        raise NotTestable("the results have no 'schedule' column")
    return sorted(runs.df["model"].unique())


def _ref(runs: Runs, model: str, metric: str) -> float:
    vals = runs.df.loc[(runs.df["model"] == model) & (runs.df["ratio"] == 0), metric].dropna()
    if vals.empty:
        raise NotTestable(f"{model} has no {metric} at ratio 0 (the unpruned control)")
    return float(vals.mean())


def _g(runs: Runs, metric: str, model: str, granularity: str, schedule: str,
       ratio: float) -> Group | None:
    return runs.group(KEYS, (model, granularity, schedule, ratio), metric)


def _versus(better: str, worse: str, granularities: tuple[str, ...], high_only: bool):
    """Cells: ``better`` − ``worse`` schedules per model, granularity and shared ratio."""
    def judge(runs: Runs, rule: Rule, metric: str):
        runs.require(metric)
        cells = []
        for model in _models(runs):
            ref = _ref(runs, model, metric)
            for g in granularities:
                have = runs.groups(KEYS, metric)
                ratios = sorted({r for (m, gg, s, r) in have if (m, gg, s) == (model, g, better)}
                                & {r for (m, gg, s, r) in have
                                   if (m, gg, s) == (model, g, worse)} - {0.0})
                if high_only:
                    ratios = [r for r in ratios if r >= HIGH[g] - 1e-9]
                for r in ratios:
                    parts = [Part(f"{better} − {worse}", difference(
                        _g(runs, metric, model, g, better, r), _g(runs, metric, model, g, worse,
                                                                   r)),
                        "greater", "difference", show_map(ref), margin=MAP_MARGIN * ref)]
                    if better == "sensitivity":
                        parts.append(_same_macs(runs, model, g, r))
                    cells.append(Cell(f"{model} {g} {ratio_label(r)}", parts))
        if not cells:
            raise NotTestable(f"no model has both {better} and {worse} cells at "
                              + ("high ratios" if high_only else "a shared ratio"))
        return cells, []
    return judge


def _same_macs(runs: Runs, model: str, g: str, r: float) -> Part:
    """A guard: the allocated model may not have more MACs than the uniform one (beyond the
    negligible margin), or the comparison would favour it."""
    a = _g(runs, "macs", model, g, "sensitivity", r)
    b = _g(runs, "macs", model, g, "one-shot", r)
    if a is None or b is None:
        raise NotTestable(f"{model} {g} {ratio_label(r)}: the MACs of both schedules are needed")
    return Part("MACs, sensitivity / uniform", exact(math.log(a.mean / b.mean)),
                "within", "same MACs", show_ratio, hi=math.log(1 + LATENCY_MARGIN),
                deterministic=True)


def _paper_kept(runs: Runs, rule: Rule, metric: str):
    col = f"retained.{metric}"
    runs.require(metric)
    cells = []
    for model in _models(runs):
        fam = runs.df.loc[runs.df["model"] == model, "family"]
        if fam.empty or fam.iloc[0] != "yolov3":
            continue
        for r, kept in PAPER_KEPT.items():
            g = _g(runs, col, model, "weight", "cubic", r)
            if g is not None:
                cells.append(Cell(f"{model} {ratio_label(r)}", [Part(
                    f"retained (the paper's one-shot: {kept:.1%})", contrast([g], [1.0]),
                    "within", "threshold", show_share, lo=kept)]))
    if not cells:
        raise NotTestable("no YOLOv3 model pruned by weights on the cubic schedule at 75 % or "
                          "90 %")
    return cells, []


_GENERAL = "reproduced when every cell passes, partly when more than half do (the general rule)"

RULES: list[Rule] = [
    Rule("1", "gradual (cubic) pruning keeps more mAP than one-shot pruning at high ratios",
         "Zhu & Gupta 2017; Neural Magic ('one-shot to 90 % does not work well'); issue 26",
         "difference", "map", "every model and granularity, fine-tuned the same number of "
         "steps", "weights 75 % and above, filters 50 % and above",
         "one-sided Welch t-test of cubic − one-shot per model, granularity and ratio, Holm "
         "across cells", f"a difference significantly under {MAP_MARGIN:.1%} of the unpruned "
         "mAP fails", _GENERAL, _versus("cubic", "one-shot", ("weight", "filter"), True),
         ("map_conf05",)),
    Rule("2", "gradual pruning keeps more mAP under attack than one-shot pruning at high "
         "ratios (robust mAP as well as clean)", "issue 26's question; no published detector "
         "figures", "difference", "adv_map", "as finding 1", "as finding 1",
         "as finding 1, on the mAP under PGD", f"as finding 1 ({MAP_MARGIN:.1%} of the unpruned "
         "model's adversarial mAP)", _GENERAL,
         _versus("cubic", "one-shot", ("weight", "filter"), True)),
    Rule("3", "per-layer ratios chosen by sensitivity analysis keep more mAP than one ratio "
         "everywhere at the same MACs", "Distiller's and NNI's sensitivity analysis; issue 26",
         "difference", "map", "filter pruning, every model; the allocated model's MACs at most "
         f"{LATENCY_MARGIN:.0%} above the uniform one's (a guard)", "every filter ratio",
         "one-sided Welch t-test of sensitivity − uniform (one-shot) per model and ratio, Holm "
         "across cells", f"a difference significantly under {MAP_MARGIN:.1%} of the unpruned "
         "mAP fails", _GENERAL, _versus("sensitivity", "one-shot", ("filter",), False),
         ("adv_map",)),
    Rule("4", "pruned gradually, the embedded YOLOv3 keeps at 75 % and 90 % weight sparsity at "
         "least the share of mAP the paper's one-shot YOLOv3 kept", "the paper's Table V "
         "(74.1 % at 75 %, 44.9 % at 90 %, averages of ten runs)", "threshold", "map",
         "YOLOv3, weight pruning, cubic schedule", "75 %, 90 %",
         "one-sided Welch test that the mean retained mAP exceeds the paper's share", "none: "
         "the paper's shares are the thresholds", _GENERAL, _paper_kept),
]

CLAIMS = {r.id: r.claim for r in RULES}


def findings(df: pd.DataFrame) -> list[Finding]:
    """One verdict per question of the schedule study, from :func:`prepare`'s table."""
    return judge_all(RULES, df)
