"""The second study's findings (Deformable DETR pruned on KITTI, ``seeds/003``), declared as rules.

The input is the long table `make kitti-study` collects: one row per scenario × run × ratio, a
scenario being ``<model>.<granularity>.<state>`` (``deformable-detr-small.filter.pruned``), with
the columns ``family`` (``deformable-detr`` or ``yolov3``), ``granularity`` (``filter``: L1 filter
pruning, compacted; ``weight``: magnitude weight pruning), ``finetune_steps`` (0: measured
straight after pruning, the study's ``pruned`` state; more: the ``finetuned`` state, several
runs) and the metrics. Ratio 0 is the unpruned model. :func:`prepare` adds ``model``, ``state``
and ``retained.<metric>``: the mAP as a share of the same model, granularity and state's mean
mAP at ratio 0, so that detectors of different accuracy compare.

:data:`RULES` is the declaration; :func:`findings` judges it. The study's claims concern its
Deformable DETR (the first model of the ``deformable-detr`` family in the table), measured
straight after pruning; that state is deterministic (one measurement per cell, compared
directly: more runs do not change it). YOLOv3, pruned the same way on the same data, is the CNN
detector of finding 5 and never stands in for Deformable DETR: without a Deformable DETR model
those findings are not testable here. mAP is COCO's, at confidence 0.001 (the study does not
state a threshold), with the paper's 0.5 judged the same way beside it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd

from prunekit.stats.findings import (
    ABOUT,
    LATENCY_MARGIN,
    MAP_MARGIN,
    Cell,
    Finding,
    NotTestable,
    Part,
    Rule,
    Runs,
    in_range,
    judge_all,
    show_map,
    show_plain,
    show_ratio,
    show_share,
)
from prunekit.stats.inference import Group, contrast, difference, exact
from prunekit.stats.tables import ratio_label

#: Printed before the rules in the declaration.
PREAMBLE = (
    "The study's claims concern its Deformable DETR (the first model of the `deformable-detr` "
    "family in the table) measured straight after pruning, as the study measured it: "
    "deterministic, one measurement per cell. YOLOv3, pruned the same way on the same data, is "
    "the CNN of finding 5 and never stands in for Deformable DETR. Accuracy is `retained`: mAP "
    "as a share of the same model, method and state's unpruned mAP. mAP is COCO's, at "
    "confidence 0.001 (the study states no threshold), with the paper's 0.5 (`map_conf05`) "
    "judged by the same rule beside it. Latency pools both states of a ratio (the same "
    "architecture: 1 + runs measurements).",
)
DETR = "deformable-detr"
CNN = "yolov3"
REFERENCE = "deformable-detr"
KEYS = ("model", "granularity", "state", "ratio")
POOLED = ("model", "granularity", "ratio")
MAP = "map"
MAP_BESIDE = ("map_conf05",)
LATENCY = "latency_ms"
#: What the study's Deformable DETR measured unpruned (its README; thop's multiply–accumulates).
BASELINE = {"map": 0.117, "latency_ms": 205.0, "macs": 204.87e9}
#: "Collapse": less than half of the unpruned mAP left.
COLLAPSE = 0.5
#: The study's figure of FLOPs removed by 50 % filter pruning.
QUARTER = 0.24


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """The study's table with ``model``, ``state`` and ``retained.<metric>`` added."""
    df = df.copy()
    df["model"] = df["scenario"].str.split(".").str[0]
    df["state"] = np.where(df["finetune_steps"].fillna(0) > 0, "finetuned", "pruned")
    keys = ["model", "granularity", "state"]
    for metric in ("map", "map_conf05"):
        if metric not in df.columns:
            continue
        base = df[df["ratio"] == 0].groupby(keys)[metric].mean()
        dense = pd.Series([base.get(k, math.nan) for k in
                           zip(df["model"], df["granularity"], df["state"], strict=True)],
                          index=df.index)
        df[f"retained.{metric}"] = df[metric] / dense.where(dense > 0)
    return df


def _model(runs: Runs, family: str) -> str:
    df = runs.df
    if "family" not in df.columns:
        raise NotTestable("the results have no 'family' column")
    names = sorted(df.loc[df["family"] == family, "model"].unique())
    if not names:
        what = "Deformable DETR" if family == DETR else "YOLOv3"
        raise NotTestable(f"the results hold no {what} model (family {family!r})")
    return names[0]


def _ratios(runs: Runs, metric: str, model: str, granularity: str, state: str) -> list[float]:
    return sorted(r for (m, g, s, r) in runs.groups(KEYS, metric)
                  if (m, g, s) == (model, granularity, state))


def _g(runs: Runs, metric: str, model: str, granularity: str, state: str, ratio: float,
       log: bool = False) -> Group:
    g = runs.group(KEYS, (model, granularity, state, ratio), metric, log)
    if g is None:
        raise NotTestable(f"{model} has no {metric} for {granularity} pruning, {state}, at "
                          f"{ratio_label(ratio)}")
    return g


def _pooled(runs: Runs, metric: str, model: str, granularity: str, ratio: float) -> Group:
    """Both states of a ratio together, log-transformed: pruning fixes the architecture and
    the fine-tune changes only weights, so latency has 1 + RUNS measurements per ratio."""
    g = runs.group(POOLED, (model, granularity, ratio), metric, log=True)
    if g is None:
        raise NotTestable(f"{model} has no {metric} for {granularity} pruning at "
                          f"{ratio_label(ratio)}")
    return g


def _retained(metric: str) -> str:
    return f"retained.{metric}"


def _baseline(metric: str, log: bool):
    def judge(runs: Runs, rule: Rule, _: str):
        runs.require(metric)
        model = _model(runs, DETR)
        if model != REFERENCE:
            raise NotTestable(f"the claim is about the study's reference Deformable DETR "
                              f"(ResNet-50) at 800 × 1333 on KITTI; the results hold {model}")
        if log:
            g = _pooled(runs, metric, model, "filter", 0.0)
            target = math.log(BASELINE[metric])
            lo, hi, show = target - math.log(ABOUT), target + math.log(ABOUT), \
                lambda v: f"{math.exp(v):.4g}"
        else:
            g = _g(runs, metric, model, "filter", "pruned", 0.0)
            lo, hi, show = BASELINE[metric] / ABOUT, BASELINE[metric] * ABOUT, \
                lambda v: f"{v:.4g}"
        return [Cell(f"{model}, unpruned", [Part(
            f"{metric}", contrast([g], [1.0]), "within", "band", show, lo=lo, hi=hi,
            deterministic=not log)])], []
    return judge


def _finding1a(runs: Runs, rule: Rule, metric: str):
    col = _retained(metric)
    runs.require(col)
    model = _model(runs, DETR)
    shared = sorted(set(_ratios(runs, col, model, "filter", "pruned"))
                    & set(_ratios(runs, col, model, "weight", "pruned")) - {0.0})
    if not shared:
        raise NotTestable(f"{model} has no ratio pruned both by filters and by weights")
    return [Cell(f"{ratio_label(r)}", [Part(
        "retained, weight − filter",
        difference(_g(runs, col, model, "weight", "pruned", r),
                   _g(runs, col, model, "filter", "pruned", r)),
        "greater", "difference", show_map(1.0), margin=MAP_MARGIN, deterministic=True)])
        for r in shared], []


def _filter_threshold(lo_ratio: float, hi_ratio: float, lo: float, hi: float, first: bool):
    def judge(runs: Runs, rule: Rule, metric: str):
        col = _retained(metric)
        runs.require(col)
        model = _model(runs, DETR)
        ratios = in_range(_ratios(runs, col, model, "filter", "pruned"), lo_ratio, hi_ratio)
        if first:
            ratios = ratios[:1]
        if not ratios:
            raise NotTestable(f"{model} has no filter ratio in {ratio_label(lo_ratio)}–"
                              f"{ratio_label(hi_ratio)} straight after pruning")
        return [Cell(f"{ratio_label(r)}", [Part(
            "retained", contrast([_g(runs, col, model, "filter", "pruned", r)], [1.0]),
            "within", "threshold", show_share, lo=lo, hi=hi, deterministic=True)])
            for r in ratios], []
    return judge


def _finding2a(runs: Runs, rule: Rule, metric: str):
    runs.require(metric)
    model = _model(runs, DETR)
    m0 = _g(runs, metric, model, "filter", "pruned", 0.0)
    m5 = _g(runs, metric, model, "filter", "pruned", 0.5)
    removed = 1 - m5.mean / m0.mean
    return [Cell("50 %", [Part("MACs removed", exact(removed), "within",
                               "band", show_share, lo=QUARTER / ABOUT, hi=QUARTER * ABOUT)])], []


def _finding2b(runs: Runs, rule: Rule, metric: str):
    runs.require(metric)
    model = _model(runs, DETR)
    e = difference(_pooled(runs, metric, model, "filter", 0.5),
                   _pooled(runs, metric, model, "filter", 0.0))
    return [Cell("50 %", [Part("latency pruned / unpruned", e, "within", "band", show_ratio,
                               lo=-math.log(ABOUT), hi=math.log(ABOUT),
                               opposite_below=-math.log(ABOUT))])], []


def _finding3a(runs: Runs, rule: Rule, metric: str):
    runs.require(metric)
    model = _model(runs, DETR)
    ratios = _ratios(runs, metric, model, "weight", "pruned")
    if len(ratios) < 2 or ratios[0] != 0:
        raise NotTestable(f"{model} needs its unpruned and weight-pruned checkpoint sizes")
    top = ratios[-1]
    share = _g(runs, metric, model, "weight", "pruned", top).mean / \
        _g(runs, metric, model, "weight", "pruned", 0.0).mean
    return [Cell(f"{ratio_label(top)}", [Part("bytes pruned / unpruned",
                                              exact(share), "within",
                                              "threshold", show_share, hi=0.5)])], []


def _finding3b(runs: Runs, rule: Rule, metric: str):
    runs.require(metric)
    model = _model(runs, DETR)
    m = math.log(1 + LATENCY_MARGIN)
    base = _pooled(runs, metric, model, "weight", 0.0)
    ratios = [r for r in sorted({r for (mo, g, r) in runs.groups(POOLED, metric)
                                 if (mo, g) == (model, "weight")}) if r > 0]
    if not ratios:
        raise NotTestable(f"{model} has no weight-pruned latency")
    return [Cell(f"{ratio_label(r)}", [Part(
        "latency pruned / unpruned", difference(_pooled(runs, metric, model, "weight", r), base),
        "within", "equivalence", show_ratio, lo=-m, hi=m, outside="opposite")])
        for r in ratios], []


def _finding4a(runs: Runs, rule: Rule, metric: str):
    return _filterless_threshold(runs, metric, (0.3, 0.4), 1 / ABOUT)


def _filterless_threshold(runs: Runs, metric: str, ratios: tuple[float, ...], lo: float):
    col = _retained(metric)
    runs.require(col)
    model = _model(runs, DETR)
    have = _ratios(runs, col, model, "weight", "pruned")
    present = [r for r in ratios if any(abs(r - h) < 1e-9 for h in have)]
    if not present:
        raise NotTestable(f"{model} has no weight ratio of {', '.join(map(ratio_label, ratios))}"
                          f" straight after pruning")
    return [Cell(f"{ratio_label(r)}", [Part(
        "retained", contrast([_g(runs, col, model, "weight", "pruned", r)], [1.0]), "within",
        "threshold", show_share, lo=lo, deterministic=True)]) for r in present], []


def _finding4b(runs: Runs, rule: Rule, metric: str):
    col = _retained(metric)
    runs.require(col)
    model = _model(runs, DETR)
    ratios = [r for r in _ratios(runs, col, model, "weight", "pruned") if r > 0]
    if not ratios:
        raise NotTestable(f"{model} has no weight ratio straight after pruning")
    kept = {r: _g(runs, col, model, "weight", "pruned", r).mean for r in ratios}
    collapse = next((r for r in ratios if kept[r] < COLLAPSE), math.inf)
    return [Cell("the collapse", [Part(
        f"first weight ratio keeping less than {COLLAPSE:.0%}",
        exact(collapse), "within", "location",
        lambda v: "none" if not math.isfinite(v) else ratio_label(v), lo=0.6 - 1e-9,
        hi=0.8 + 1e-9)])], [
        "retained straight after pruning: " + ", ".join(f"{kept[r]:.1%} at {ratio_label(r)}"
                                                         for r in ratios)]


def _finding5(runs: Runs, rule: Rule, metric: str):
    col = _retained(metric)
    runs.require(col)
    detr, cnn = _model(runs, DETR), _model(runs, CNN)
    cells = []
    for granularity in ("filter", "weight"):
        ratios = sorted(set(_ratios(runs, col, detr, granularity, "finetuned"))
                        & set(_ratios(runs, col, cnn, granularity, "finetuned")) - {0.0})
        for r in ratios:
            cells.append(Cell(f"{granularity} {ratio_label(r)}", [Part(
                f"retained, {cnn} − {detr}",
                difference(_g(runs, col, cnn, granularity, "finetuned", r),
                           _g(runs, col, detr, granularity, "finetuned", r)),
                "greater", "difference", show_map(1.0), margin=MAP_MARGIN)]))
    if not cells:
        raise NotTestable(f"{detr} and {cnn} share no pruned ratio in the fine-tuned state")
    return cells, []


def _finding6(runs: Runs, rule: Rule, metric: str):
    col = _retained(metric)
    runs.require(col, "macs")
    model = _model(runs, DETR)
    ratios = [r for r in _ratios(runs, col, model, "filter", "pruned") if r > 0]
    m0 = _g(runs, "macs", model, "filter", "pruned", 0.0).mean
    cells = []
    for r in ratios:
        macs = runs.group(KEYS, (model, "filter", "pruned", r), "macs")
        if macs is None:
            continue
        kept = _g(runs, col, model, "filter", "pruned", r)
        removed = 1 - macs.mean / m0
        lost = replace(contrast([kept], [-1.0]), value=1 - kept.mean - removed)
        cells.append(Cell(f"{ratio_label(r)}", [Part(
            f"share of mAP lost − share of MACs removed ({removed:.1%})", lost, "greater",
            "trade-off", show_plain, margin=MAP_MARGIN, deterministic=True)]))
    if not cells:
        raise NotTestable(f"{model} has no filter ratio with both mAP and MACs")
    return cells, []


_GENERAL = "reproduced when every cell passes, partly when more than half do (the general rule)"
_POINT = ("straight after pruning: one deterministic measurement per cell, compared directly "
          "(more runs do not change it)")

RULES: list[Rule] = [
    Rule("B1", "baseline Deformable DETR: mAP ≈ 0.117", "README, Key results", "how much",
         MAP, "the study's reference model (ResNet-50) on KITTI, unpruned", "0 %",
         "the unpruned mAP inside the band", f"'≈': 0.117 / {ABOUT} to 0.117 · {ABOUT}",
         "one cell: reproduced or not", _baseline("map", False),
         quote="mAP ≈ 0.117"),
    Rule("B2", "baseline Deformable DETR: latency ~205 ms", "README, Key results", "how much",
         LATENCY, "the study's reference model, unpruned (both states pooled)", "0 %",
         "the geometric-mean latency inside the band (TOST on log latency)",
         f"205 / {ABOUT} to 205 · {ABOUT} ms", "one cell: reproduced or not",
         _baseline("latency_ms", True),
         quote="Latency ~205 ms"),
    Rule("B3", "baseline Deformable DETR: ~205 GFLOPs", "README, Key results", "how much",
         "macs", "the study's reference model, unpruned (thop counts multiply–accumulates)",
         "0 %", "the MACs inside the band", f"204.87 G / {ABOUT} to 204.87 G · {ABOUT}",
         "one cell: reproduced or not", _baseline("macs", False),
         quote="~205 GFLOPs"),
    Rule("1a", "filter pruning is the least robust: Deformable DETR keeps less of its mAP "
         "under filter pruning than under weight pruning", "README, Key insights: 'Filter "
         "Pruning → Least robust'", "difference", MAP,
         f"Deformable DETR, {_POINT}", "the ratios both methods share (10–50 %)",
         "retained mAP, weight − filter, per shared ratio", f"the difference must exceed "
         f"{MAP_MARGIN:.1%} of the unpruned mAP", _GENERAL, _finding1a, MAP_BESIDE,
         quote="Filter Pruning → Least robust, fast accuracy collapse"),
    Rule("1b", "severe accuracy collapse (> 20 % lost) under filter pruning", "README, Key "
         "results (Filter Pruning)", "threshold", MAP, f"Deformable DETR, {_POINT}",
         "10 % (the study's first filter ratio; the first present)",
         "retained mAP below 80 %", "none: a threshold", "one cell: reproduced or not",
         _filter_threshold(0.01, 1.0, -math.inf, 0.8, first=True), MAP_BESIDE,
         quote="Severe accuracy collapse (>20%)"),
    Rule("1c", "filter pruning leaves 0 mAP from 30 % on", "the study's notebook "
         "(torch_filter_pruning_final.ipynb): 0.0 mAP at 30–50 %", "threshold", MAP,
         f"Deformable DETR, {_POINT}", "30 % and above", f"retained mAP at most "
         f"{MAP_MARGIN:.1%} ('0' within the negligible margin) at every ratio",
         "none: a threshold", _GENERAL,
         _filter_threshold(0.3, 1.0, -math.inf, MAP_MARGIN, first=False), MAP_BESIDE),
    Rule("2a", "50 % filter pruning removes about a quarter of the FLOPs (~24 %)", "README, Key "
         "results (Filter Pruning)", "how much", "macs", "Deformable DETR, as compacted",
         "50 %", "the share of MACs removed (identical in every run: compared directly)",
         f"'~24 %': {QUARTER / ABOUT:.1%} to {QUARTER * ABOUT:.1%}",
         "one cell: reproduced or not", _finding2a,
         quote="~24% FLOP reduction at 50% pruning"),
    Rule("2b", "50 % filter pruning gives only a minor runtime gain", "README, Key results "
         "(Filter Pruning)", "how much", LATENCY, "Deformable DETR, both states pooled (the "
         "same architecture: 1 + runs measurements)", "50 %",
         "the latency ratio pruned / unpruned (geometric means): 90 % CI inside the band "
         "(TOST on log latency)", f"'minor': the 'about the same' band {1 / ABOUT:.2f}–{ABOUT}"
         f"; significantly faster than {1 / ABOUT:.2f}× (a major gain) is opposite",
         "one cell: reproduced or not", _finding2b,
         quote="Minor runtime gain"),
    Rule("3a", "weight pruning reduces storage", "README, Key results (Weight Pruning)",
         "threshold", "bytes_stored", f"Deformable DETR, {_POINT}", "the largest weight ratio",
         "checkpoint bytes at the largest ratio over the unpruned bytes",
         "'good storage reduction': at most half the unpruned bytes",
         "one cell: reproduced or not", _finding3a,
         quote="Reduced storage but no speedup"),
    Rule("3b", "weight pruning gives no speed-up", "README, Key results and Key insights "
         "(Weight Pruning)", "no effect", LATENCY, "Deformable DETR, both states pooled",
         "every weight ratio", "equivalence (TOST) of the latency ratio pruned / unpruned per "
         "ratio, Holm across ratios", f"±{LATENCY_MARGIN:.0%}; a ratio significantly outside "
         "it is opposite", _GENERAL, _finding3b,
         quote="Weight Pruning → Good storage reduction, no latency gain"),
    Rule("4a", "weight pruning holds up at 30–40 % sparsity ('better robustness')", "README, "
         "Key results (Weight Pruning)", "threshold", MAP, f"Deformable DETR, {_POINT}",
         "30 % and 40 %", f"retained mAP at least {1 / ABOUT:.0%} (about the unpruned mAP: "
         "the 80–125 % band)", "none: a threshold", _GENERAL, _finding4a, MAP_BESIDE,
         quote="Better robustness at 30–40% sparsity"),
    Rule("4b", "weight pruning collapses sharply beyond 50–70 %", "README, Key results "
         "(Weight Pruning)", "shape", MAP, f"Deformable DETR, {_POINT}", "every weight ratio",
         f"the first weight ratio keeping less than {COLLAPSE:.0%} of the unpruned mAP (the "
         "collapse) lies in 60–80 % (the first grid ratios beyond 50 % and up to beyond 70 %)",
         "none: a location", "one cell: reproduced or not", _finding4b, MAP_BESIDE,
         quote="Sharp collapse beyond 50–70%"),
    Rule("5", "pruning Deformable DETR is challenging due to its sensitivity: it is more "
         "sensitive than a CNN detector", "README, Conclusion (tested here against YOLOv3 "
         "pruned the same way on the same data; the study had no CNN)", "difference", MAP,
         "both models, fine-tuned after pruning (runs)", "every shared ratio of both methods",
         "one-sided Welch t-test of retained mAP, YOLOv3 − Deformable DETR, per method and "
         "ratio, Holm across cells", f"a difference significantly under {MAP_MARGIN:.1%} of "
         "the unpruned mAP fails", _GENERAL, _finding5, MAP_BESIDE,
         quote="Pruning Deformable DETR is challenging due to its sensitivity."),
    Rule("6", "structured filter pruning is a poor trade-off", "README, Key insights",
         "difference", MAP, f"Deformable DETR, {_POINT}", "every filter ratio",
         "the share of mAP lost minus the share of MACs removed, per ratio: a poor trade-off "
         "loses more accuracy than it saves compute", f"the excess must exceed "
         f"{MAP_MARGIN:.1%}", _GENERAL, _finding6, MAP_BESIDE,
         quote="Structured Filter Pruning → Poor trade-off"),
]

#: Power notes (version 2.1), from the calibration at the spread of this project's default run
#: (benchmarks/bench_calibration.py): why 10 runs per cell cannot decide these findings.
POWER = {
    "2b": "'minor' is a 90 % interval inside ×0.80–×1.25, and the default run's latency varies "
          "by log-sd 0.35 between runs at 50 % (cells timed two at a time on a shared two-core "
          "machine): about 50 runs per cell; far fewer on an idle machine",
    "3b": "equivalence within ±5 % against the default run's timing spread (log-sd 0.23–0.48 "
          "between runs): more than 50 runs per cell; it needs timing steadier than the margin, "
          "which this machine under load does not give",
}
RULES = [replace(r, power=POWER.get(r.id, "")) for r in RULES]

CLAIMS = {r.id: r.claim for r in RULES}


def findings(df: pd.DataFrame) -> list[Finding]:
    """One verdict per declared finding of the second study, from :func:`prepare`'s table."""
    return judge_all(RULES, df)
