"""The first study's findings (the paper, ``seeds/000``), declared as rules.

:data:`RULES` is the declaration (printed by ``prunekit stats --rules`` and in every report):
the paper's six findings (6 as two claims, 6a and 6b) and the five lesser ones it states, each
with its rule; :func:`findings` judges them on a results table with
:func:`~prunekit.stats.findings.decide`. Scenarios are found by their attributes (granularity,
score method, colour), never by a fallback to another scenario.

mAP is judged at the paper's confidence threshold, 0.5 (``map_conf05``): the paper filtered its
detections at 0.5 before NMS, and a reproduction measures what the paper measured. COCO's
protocol (0.001, ``map``) is judged the same way beside it, with the adversarial mAP at 0.5
(``adv_map_conf05``, the product's concern, not the paper's claim). The paper's own Tables
V–XIV are mAP at 0.5 (:func:`prunekit.stats.seeds.paper_results`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

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
)
from prunekit.stats.inference import Group, contrast, difference
from prunekit.stats.loading import _GRANULARITY_NAMES, _METHOD_NAMES
from prunekit.stats.tables import ratio_label

#: Printed before the rules in the declaration.
PREAMBLE = (
    "Scenarios are found by their attributes (granularity, score method, colour). mAP is "
    "judged at the paper's confidence threshold, 0.5 (`map_conf05`): the paper filtered its "
    "detections at 0.5 before NMS, and a reproduction measures what the paper measured. COCO's "
    "protocol (confidence 0.001, `map`) is judged by the same rule beside it, and so is the "
    "mAP under PGD at 0.5 (`adv_map_conf05`: the product's concern, not the paper's claim). "
    "The paper's own Tables V–XIV are mAP at 0.5.",
)
KEYS = ("scenario", "ratio")
MAP = "map_conf05"
MAP_BESIDE = ("map", "adv_map_conf05")
LATENCY = "latency_ms"

COLOUR = ("weight", "deeplift", "rgb"), ("weight", "hydra", "rgb"), \
    ("filter", "deeplift", "rgb"), ("filter", "hydra", "rgb")
GREY = ("weight", "deeplift", "grey")
SCENARIOS = (*COLOUR, GREY)


def _describe(attrs: tuple[str, str, str]) -> str:
    g, m, c = attrs
    return (f"{_GRANULARITY_NAMES.get(g, g).lower()} {_METHOD_NAMES.get(m, m)}"
            + (" greyscale" if c == "grey" else ""))


def _scenario(runs: Runs, attrs: tuple[str, str, str]) -> str | None:
    """The scenario with these (granularity, method, colour), the first by name if several."""
    return runs.index(("granularity", "method", "colour"), "scenario").get(attrs)


def _need(runs: Runs, *attrs: tuple[str, str, str]) -> list[str]:
    names = [_scenario(runs, a) for a in attrs]
    missing = [_describe(a) for a, s in zip(attrs, names, strict=True) if s is None]
    if missing:
        raise NotTestable(f"the results have no {' or '.join(missing)} scenario")
    return names


def _ratios(runs: Runs, metric: str, *scenarios: str) -> list[float]:
    """Ratios at which every scenario has runs of ``metric``."""
    have = runs.groups(KEYS, metric)
    sets = [{r for (s, r) in have if s == sc} for sc in scenarios]
    return sorted(set.intersection(*sets)) if sets else []


def _g(runs: Runs, scenario: str, ratio: float, metric: str, log: bool = False) -> Group:
    g = runs.group(KEYS, (scenario, ratio), metric, log)
    if g is None:
        raise NotTestable(f"{scenario} has no {metric} at {ratio_label(ratio)}")
    return g


def _map_ref(runs: Runs, metric: str) -> float:
    """The unpruned colour models' mean ``metric``: what mAP margins are shares of."""
    runs.require(metric)
    vals = [runs.group(KEYS, (s, 0.0), metric) for s in
            filter(None, (_scenario(runs, a) for a in COLOUR))]
    vals = [g.mean for g in vals if g is not None]
    if not vals:
        raise NotTestable(f"the results have no {metric} at ratio 0 (the unpruned model the "
                          f"mAP margin is a share of)")
    return sum(vals) / len(vals)


def _window(runs: Runs, metric: str, scenarios: list[str], lo: float, hi: float) -> list[float]:
    ratios = in_range(_ratios(runs, metric, *scenarios), lo, hi)
    if not ratios:
        raise NotTestable(f"no ratio in {ratio_label(lo)}–{ratio_label(hi)} has {metric} for "
                          f"{' and '.join(scenarios)}")
    return ratios


def _pairs(runs: Runs, rule: Rule, metric: str, pairs, lo: float, hi: float, make) -> list[Cell]:
    """One cell per (pair of scenario attributes, ratio in [lo, hi]): ``make(a, b, r)``."""
    runs.require(metric)
    cells = []
    for name, a_attrs, b_attrs in pairs:
        a, b = _need(runs, a_attrs, b_attrs)
        for r in _window(runs, metric, [a, b], lo, hi):
            cells.append(Cell(f"{name} at {ratio_label(r)}", [make(a, b, r)]))
    return cells


# ------------------------------------------------------------------------------ the rules


def _finding1(runs: Runs, rule: Rule, metric: str):
    runs.require(metric)
    cells, notes = [], []
    for attrs in SCENARIOS:
        s = _scenario(runs, attrs)
        if s is None:
            continue
        ratios = _ratios(runs, metric, s)
        first, last = ratios[0], ratios[-1]
        pivot = max((r for r in ratios if first < r <= 0.6 + 1e-9), default=None)
        high = max((r for r in ratios if pivot is not None and pivot < r <= 0.9 + 1e-9),
                   default=None)
        if high is None:
            notes.append(f"{s}: needs ratios on both sides of 60 % up to 90 %")
            continue
        g = {r: _g(runs, s, r, metric) for r in ratios}
        ref = g[first].mean
        show = show_map(ref)
        low_w, high_w = 1 / (pivot - first), 1 / (high - pivot)
        parts = [
            Part(f"falls {ratio_label(first)}→{ratio_label(last)}",
                 difference(g[first], g[last]), "greater", "falls", show,
                 margin=MAP_MARGIN * ref),
            Part(f"loss per unit of ratio {ratio_label(pivot)}→{ratio_label(high)} minus "
                 f"{ratio_label(first)}→{ratio_label(pivot)}",
                 contrast([g[first], g[pivot], g[high]], [-low_w, low_w + high_w, -high_w]),
                 "greater", "sharper beyond 60 %", show_plain),
        ]
        parts += [Part(f"rise {ratio_label(a)}→{ratio_label(b)}", difference(g[b], g[a]),
                       "guard", "no rise", show)
                  for a, b in itertools.pairwise(ratios)]
        cells.append(Cell(s, parts))
    if not cells and not notes:
        raise NotTestable("the results have none of the paper's five scenarios")
    return cells, notes


def _method_pairs():
    return [(f"{_GRANULARITY_NAMES[g]}: DeepLIFT − HYDRA", (g, "deeplift", "rgb"),
             (g, "hydra", "rgb")) for g in ("weight", "filter")]


def _granularity_pairs():
    return [(f"{_METHOD_NAMES[m]}: unstructured − structured", ("weight", m, "rgb"),
             ("filter", m, "rgb")) for m in ("deeplift", "hydra")]


def _finding2(runs: Runs, rule: Rule, metric: str):
    ref = _map_ref(runs, metric)
    return _pairs(runs, rule, metric, _method_pairs(), 0.50, 0.85, lambda a, b, r: Part(
        f"{a} − {b}", difference(_g(runs, a, r, metric), _g(runs, b, r, metric)), "greater",
        "difference", show_map(ref), margin=MAP_MARGIN * ref)), []


def _finding3(runs: Runs, rule: Rule, metric: str):
    ref = _map_ref(runs, metric)
    return _pairs(runs, rule, metric, _granularity_pairs(), 0.25, 0.90, lambda a, b, r: Part(
        f"{a} − {b}", difference(_g(runs, a, r, metric), _g(runs, b, r, metric)), "greater",
        "difference", show_map(ref), margin=MAP_MARGIN * ref)), []


def _log_ratio(runs: Runs, a: str, b: str, r: float, metric: str = LATENCY):
    """log(latency a / latency b): the difference of the two groups' mean log latencies."""
    return difference(_g(runs, a, r, metric, log=True), _g(runs, b, r, metric, log=True))


HALF = (0.5 / ABOUT, 0.5 * ABOUT)


def _finding4(runs: Runs, rule: Rule, metric: str):
    pairs = [(f"{_METHOD_NAMES[m]}: structured / unstructured", ("filter", m, "rgb"),
              ("weight", m, "rgb")) for m in ("deeplift", "hydra")]
    return _pairs(runs, rule, metric, pairs, 0.65, 1.0, lambda s, u, r: Part(
        f"{s} / {u}", _log_ratio(runs, s, u, r, metric), "within", "band", show_ratio,
        lo=math.log(HALF[0]), hi=math.log(HALF[1]), opposite_above=0.0)), []


def _finding5(runs: Runs, rule: Rule, metric: str):
    m = math.log(1 + LATENCY_MARGIN)
    pairs = [(f"{_GRANULARITY_NAMES[g]}: DeepLIFT / HYDRA", (g, "deeplift", "rgb"),
              (g, "hydra", "rgb")) for g in ("weight", "filter")]
    return _pairs(runs, rule, metric, pairs, 0.0, 1.0, lambda a, b, r: Part(
        f"{a} / {b}", _log_ratio(runs, a, b, r, metric), "within", "equivalence", show_ratio,
        lo=-m, hi=m, outside="opposite")), []


def _colour_pair():
    return [("colour − greyscale", COLOUR[0], GREY)]


def _finding6a(runs: Runs, rule: Rule, metric: str):
    ref = _map_ref(runs, metric)
    return _pairs(runs, rule, metric, _colour_pair(), 0.0, 0.65, lambda a, b, r: Part(
        f"{a} − {b}", difference(_g(runs, a, r, metric), _g(runs, b, r, metric)), "greater",
        "difference", show_map(ref), margin=MAP_MARGIN * ref)), []


def _finding6b(runs: Runs, rule: Rule, metric: str):
    ref = _map_ref(runs, metric)
    d = MAP_MARGIN * ref
    return _pairs(runs, rule, metric, _colour_pair(), 0.95, 1.0, lambda a, b, r: Part(
        f"{a} − {b}", difference(_g(runs, a, r, metric), _g(runs, b, r, metric)), "within",
        "equivalence", show_map(ref), lo=-d, hi=d, outside="opposite")), []


def _segment(ratios: list[float], lo: float, hi: float) -> tuple | None:
    """The first and last ratio of a segment of the curve (None: fewer than two ratios)."""
    inside = in_range(ratios, lo, hi)
    return (inside[0], inside[-1]) if len(inside) >= 2 else None


def _finding7(runs: Runs, rule: Rule, metric: str):
    runs.require(metric)
    cells, notes = [], []
    for attrs in COLOUR:
        s = _scenario(runs, attrs)
        if s is None:
            continue
        ratios = _ratios(runs, metric, s)
        segs = [_segment(ratios, 0.0, 0.25), _segment(ratios, 0.5, 0.85),
                _segment(ratios, 0.9, 1.0)]
        if None in segs:
            notes.append(f"{s}: needs two ratios in each of 0–25 %, 50–85 % and 90–100 %")
            continue
        (f0, f1), (m0, m1), (l0, l1) = segs
        g = {r: _g(runs, s, r, metric) for r in (f0, f1, m0, m1, l0, l1)}
        mid = [1 / (m1 - m0), -1 / (m1 - m0)]

        def steeper(a: float, b: float, mid=mid, g=g, m0=m0, m1=m1):
            return contrast([g[m0], g[m1], g[a], g[b]], [*mid, -1 / (b - a), 1 / (b - a)])

        cells.append(Cell(s, [
            Part(f"decline per unit of ratio {ratio_label(m0)}–{ratio_label(m1)} minus "
                 f"{ratio_label(f0)}–{ratio_label(f1)} (ms)", steeper(f0, f1), "greater",
                 "steeper than the start", show_plain),
            Part(f"the same minus {ratio_label(l0)}–{ratio_label(l1)} (ms)", steeper(l0, l1),
                 "greater", "steeper than the end", show_plain)]))
    if not cells and not notes:
        raise NotTestable("the results have none of the paper's four colour scenarios")
    return cells, notes


def _finding8(runs: Runs, rule: Rule, metric: str):
    pairs = [(f"{_GRANULARITY_NAMES[g]}: HYDRA / DeepLIFT", (g, "hydra", "rgb"),
              (g, "deeplift", "rgb")) for g in ("weight", "filter")]
    return _pairs(runs, rule, metric, pairs, 0.5, 0.5, lambda a, b, r: Part(
        f"{a} / {b}", _log_ratio(runs, a, b, r, metric), "greater", "difference",
        show_ratio)), []


SCORE_COST = 49 / 18


def _finding9(runs: Runs, rule: Rule, metric: str):
    runs.require(metric)
    df = runs.df[runs.df[metric].notna() & (runs.df["colour"] == "rgb")]
    per = "source" if "source" in df.columns and df["source"].notna().any() else None
    groups = {}
    for method in ("deeplift", "hydra"):
        sub = df[df["method"] == method]
        sub = sub.drop_duplicates(per) if per else sub.drop_duplicates(["run", metric])
        if sub.empty:
            raise NotTestable(f"the results have no {metric} for {_METHOD_NAMES[method]}")
        x = sub[metric].to_numpy(float)
        if (x <= 0).any():
            raise NotTestable(f"{metric} has values ≤ 0")
        groups[method] = Group.of([math.log(v) for v in x])
    e = difference(groups["deeplift"], groups["hydra"])
    return [Cell("DeepLIFT / HYDRA score time", [Part(
        "DeepLIFT / HYDRA", e, "within", "band", show_ratio,
        lo=math.log(SCORE_COST / ABOUT), hi=math.log(SCORE_COST * ABOUT),
        opposite_below=0.0)])], []


def _finding10(runs: Runs, rule: Rule, metric: str):
    return _pairs(runs, rule, metric, [("colour / greyscale", COLOUR[0], GREY)], 0.0, 0.65,
                  lambda a, b, r: Part(f"{a} / {b}", _log_ratio(runs, a, b, r, metric),
                                       "greater", "difference", show_ratio)), []


def _finding11(runs: Runs, rule: Rule, metric: str):
    runs.require(metric)
    cells = []
    for m in ("deeplift", "hydra"):
        u, s = _need(runs, ("weight", m, "rgb"), ("filter", m, "rgb"))
        ratios = _window(runs, metric, [u, s], 0.0, 0.65)
        g = {(x, r): _g(runs, x, r, metric, log=True) for x in (u, s) for r in ratios}
        for a, b in itertools.pairwise(ratios):
            e = contrast([g[(u, b)], g[(s, b)], g[(u, a)], g[(s, a)]], [1, -1, -1, 1])
            cells.append(Cell(f"{_METHOD_NAMES[m]}: {ratio_label(a)}→{ratio_label(b)}", [Part(
                f"(unstructured / structured at {ratio_label(b)}) ÷ (the same at "
                f"{ratio_label(a)})", e, "greater", "widening", show_ratio)]))
    if not cells:
        raise NotTestable("needs two ratios in 0–65 % for both score methods")
    return cells, []


_MAP_VERDICTS = ("reproduced when every cell passes, partly when more than half do (the "
                 "general rule)")

RULES: list[Rule] = [
    Rule("1", "mAP falls as the pruning ratio rises, and the drop is more pronounced beyond "
         "about 60 %", "section IV-A, Fig. 1a", "shape", MAP,
         "each of the five scenarios, fine-tuned after pruning (the grid's cells)",
         "all; the curve's halves split at the largest ratio ≤ 60 % and end at the largest "
         "≤ 90 % (50 % and 90 % on the paper's grid)",
         "per scenario (a cell), three parts: (a) the mean at the first ratio exceeds the "
         "mean at the last (one-sided Welch); (b) the loss per unit of ratio from the pivot "
         "(≤ 60 %) to the largest ratio ≤ 90 % exceeds the loss per unit from the first ratio "
         "to the pivot (a one-sided Welch test of that contrast of three means); (c) a guard: "
         "no significant rise between adjacent ratios. Holm across scenarios for (a) and (b), "
         "across all adjacent pairs for (c).",
         f"(a) fails when the fall is significantly under {MAP_MARGIN:.1%} of the scenario's "
         "first-ratio mAP; (b) has none: a significantly slower loss beyond 60 % is opposite",
         _MAP_VERDICTS, _finding1, MAP_BESIDE,
         quote=("It is obvious from Fig. 1a that the mAP performance of the pruned models "
                "decrease as pruning rate increases … the performance drop at higher pruning "
                "rates (beyond 60%) is more pronounced")),
    Rule("2", "DeepLIFT initialisation gives higher mAP than HYDRA's scaled initialisation at "
         "50–85 % for both pruning methods", "section V-B, Table I", "difference", MAP,
         "DeepLIFT vs HYDRA, colour, unstructured and structured", "50, 65, 75, 85 %",
         "one-sided Welch t-test of DeepLIFT − HYDRA per granularity and ratio (8 cells), "
         "Holm across them",
         f"a difference significantly under {MAP_MARGIN:.1%} of the unpruned mAP fails",
         _MAP_VERDICTS, _finding2, MAP_BESIDE,
         quote=("the former [DeepLIFT] performs better in the 50%-85% pruning ratio range for "
                "both pruning methods")),
    Rule("3", "unstructured pruning has higher mAP than structured pruning for both "
         "initialisations at 25–90 %", "section V-C, Fig. 1a, Table I", "difference", MAP,
         "unstructured vs structured, colour, DeepLIFT and HYDRA", "25, 50, 65, 75, 85, 90 %",
         "one-sided Welch t-test of unstructured − structured per score method and ratio (12 "
         "cells), Holm across them",
         f"a difference significantly under {MAP_MARGIN:.1%} of the unpruned mAP fails",
         _MAP_VERDICTS, _finding3, MAP_BESIDE,
         quote=("unstructured pruning consistently has higher mAP than structured pruning for "
                "both initialization methods, for the pruning ratio between 25%-90%")),
    Rule("4", "starting from 65 %, structured pruned models need only approximately half the "
         "time of unstructured ones", "section V-C, Fig. 1b, Table II", "how much", LATENCY,
         "structured vs unstructured, colour, DeepLIFT and HYDRA", "65 % and above",
         "the ratio of geometric-mean latencies (structured / unstructured) per score method "
         "and ratio (12 cells): its 90 % confidence interval inside the band (two one-sided "
         "Welch tests on log latency), Holm across cells",
         f"'about half': {HALF[0]:.3f}–{HALF[1]:.3f} (½ / {ABOUT} to ½ · {ABOUT}); "
         "significantly outside fails; structured significantly slower (ratio > 1) is opposite",
         _MAP_VERDICTS, _finding4,
         quote=("Starting from 65% pruning ratio, structured pruned models require only "
                "approximately half the time compared to a unstructured pruned model at the same "
                "pruning ratio")),
    Rule("5", "the score initialisation does not change inference time", "section V-B, Fig. "
         "1b, Table II", "no effect", LATENCY, "DeepLIFT vs HYDRA, colour, both granularities",
         "all", "equivalence (TOST) of the DeepLIFT / HYDRA latency ratio per granularity and "
         "ratio (18 cells on the paper's grid), Holm across cells",
         f"±{LATENCY_MARGIN:.0%} (ratio {1 / (1 + LATENCY_MARGIN):.3f}–{1 + LATENCY_MARGIN}); a "
         "ratio significantly outside it is opposite (an effect the claim denies)",
         _MAP_VERDICTS, _finding5,
         quote=("there is not a clear difference between the methods with both unstructured and "
                "structured pruning")),
    Rule("6a", "models trained on greyscale images have lower mAP than colour ones at 0–65 %",
         "section V-D, Fig. 2a, Table III", "difference", MAP,
         "unstructured DeepLIFT, colour vs greyscale", "0, 25, 50, 65 %",
         "one-sided Welch t-test of colour − greyscale per ratio (4 cells), Holm across them",
         f"a difference significantly under {MAP_MARGIN:.1%} of the unpruned colour mAP fails",
         _MAP_VERDICTS, _finding6a, MAP_BESIDE,
         quote=("the models trained with greyscale images perform much worse than one trained "
                "with colored images. The discrepency between models are the largest at the lower"
                " pruning ratios, from 0% to 65%")),
    Rule("6b", "at 95 % and 99 % colour has no effect on mAP (the models converge)",
         "section V-D, Fig. 2a, Table III", "no effect", MAP,
         "unstructured DeepLIFT, colour vs greyscale", "95, 99 %",
         "equivalence (TOST) of colour − greyscale per ratio, Holm across the cells",
         f"±{MAP_MARGIN:.1%} of the unpruned colour mAP; a gap significantly beyond it is "
         "opposite", _MAP_VERDICTS, _finding6b, MAP_BESIDE,
         quote=("At 95% and 99% pruning ratio, the color (or absense of color) has no effect on "
                "the model performance")),
    Rule("7", "the latency curve is S-shaped: a gentle decline, a steeper drop in the middle, "
         "then a plateau or slower reduction at high ratios", "section V-B, Fig. 1b", "shape",
         LATENCY, "each colour scenario", "segments 0–25 %, 50–85 % and 90–100 % (the first "
         "and last ratio of each present)",
         "per scenario (a cell): the decline per unit of ratio over the middle segment exceeds "
         "that over the first and that over the last (two one-sided Welch tests of contrasts "
         "of four means, in ms); Holm across scenarios for each",
         "none: a middle significantly flatter than an end is opposite", _MAP_VERDICTS,
         _finding7,
         quote=("the curve that connects different pruning ratios shows an ‘S’ shape. The curve "
                "starts with a gentle decline, followed by a steeper drop in the middle stages, "
                "and then a plateau or slower reduction at high pruning rates")),
    Rule("8", "DeepLIFT initialisation gives a small latency improvement over scaled "
         "initialisation at 50 % for both pruning methods", "section V-B, Table II",
         "difference", LATENCY, "DeepLIFT vs HYDRA, colour, both granularities", "50 %",
         "one-sided Welch t-test of log latency, HYDRA / DeepLIFT > 1 (2 cells), Holm",
         "none (the claim is of a small effect): DeepLIFT significantly slower is opposite",
         _MAP_VERDICTS, _finding8,
         quote=("DeepLift initialization does show small improvements over scaled initialization "
                "at 50% pruning ratio for both pruning methods")),
    Rule("9", "DeepLIFT takes almost triple the time to initialise the importance scores (49 s "
         "against 18 s)", "section V-B", "how much", "seconds_score",
         "the score files of the colour runs (`seconds_score`: the time of the step that wrote "
         "a cell's scores, one value per score file; HYDRA's includes its score optimisation, "
         "the whole of what DeepLIFT replaces)", "all",
         "the ratio of geometric-mean score times DeepLIFT / HYDRA: its 90 % confidence "
         "interval inside the band (TOST on log seconds)",
         f"'almost triple' as the paper's ×{SCORE_COST:.2f}: {SCORE_COST / ABOUT:.2f}–"
         f"{SCORE_COST * ABOUT:.2f}; DeepLIFT significantly cheaper is opposite",
         "one cell: reproduced or not", _finding9,
         quote=("Scaled initialization need on average 18 seconds, however DeepLIFT requires "
                "almost triple the time at 49 seconds on average")),
    Rule("10", "greyscale-trained models are slightly faster at smaller pruning ratios, until "
         "65 %", "section V-D, Fig. 2b, Table IV", "difference", LATENCY,
         "unstructured DeepLIFT, colour vs greyscale", "0, 25, 50, 65 %",
         "one-sided Welch t-test of log latency, colour / greyscale > 1 (4 cells), Holm",
         "none (a slight effect is claimed): greyscale significantly slower is opposite",
         _MAP_VERDICTS, _finding10,
         quote=("the greyscale-trained models are slightly faster at evaluting images at smaller "
                "pruning ratios until 65% pruning ratio")),
    Rule("11", "as the pruning ratio increases, the latency gap between unstructured and "
         "structured pruning widens", "section V-C, Fig. 1b", "shape", LATENCY,
         "unstructured vs structured, colour, DeepLIFT and HYDRA",
         "adjacent ratios from 0 to 65 % (beyond it finding 4 takes over)",
         "per score method and adjacent pair of ratios (a cell): the latency ratio unstructured "
         "/ structured is larger at the higher ratio (a one-sided Welch test of a contrast of "
         "four mean log latencies), Holm across cells",
         "none: a significantly narrowing gap is opposite", _MAP_VERDICTS, _finding11,
         quote=("As the pruning rate increases, there is an increasing gap in the time needed for"
                " the pruned models to evaluate an image")),
]

#: Power notes (version 2.1), from the calibration at the spread of this project's default run
#: (benchmarks/bench_calibration.py; runs at which a true finding is reproduced in 80 % of
#: simulated studies): why 10 runs per cell are not enough, and how many are.
POWER = {
    "2": "the paper's DeepLIFT − HYDRA gaps are 3.7–9.6 % of the unpruned mAP; the default "
         "run's standard deviation between runs is up to 7.6 % of it (at 50 %), so eight "
         "Holm-corrected one-sided tests need about 50 runs per cell (20 at the paper's own "
         "spread)",
    "3": "the paper's unstructured − structured gaps at 25 % are 5.0 % and 5.9 % of the "
         "unpruned mAP, about one run-to-run spread of the default run at 25 % (4.9 %): about "
         "20 runs per cell (5 at the paper's own spread)",
    "4": "the paper's own ratios at 65 % (0.603 and 0.611) lie within 4 % of the band's upper "
         "edge (0.625); a 90 % interval that narrow needs steadier timing than the default "
         "run's (log-sd 0.13–0.23 between runs): more than 50 runs per cell (5 at the paper's "
         "own spread)",
    "5": "the paper's DeepLIFT / HYDRA latency ratios reach 0.959–0.973 at 90–99 %, at the "
         "edge of the ±5 % margin, and the default run's timing varies by log-sd 0.10–0.23 "
         "between runs: equivalence needs more than 50 runs per cell, at the paper's own "
         "spread too (on the paper's own data 12 of its 18 cells pass)",
    "7": "a contrast of four mean latencies per scenario against the default run's timing "
         "spread (log-sd 0.10–0.23 between runs): more than 50 runs per cell (20 at the "
         "paper's own spread)",
    "8": "the claimed gain is 1.2 % and 2.0 % (HYDRA / DeepLIFT at 50 %) against a timing "
         "spread of log-sd 0.21 at 50 % in the default run: more than 50 runs per cell (10 at "
         "the paper's own spread, log-sd 0.008 at 50 %)",
    "10": "the claimed gain is 0.8–2.2 % (colour / greyscale at 0–65 %) against a timing "
          "spread of log-sd 0.10–0.23 in the default run: more than 50 runs per cell (10 at "
          "the paper's own spread)",
    "11": "the gap widens by 5–6 % from 0 to 25 % in the paper (unstructured / structured 1.00 "
          "to 1.05) against a timing spread of log-sd 0.10–0.23 in the default run: more than "
          "50 runs per cell (2 at the paper's own spread)",
}
RULES = [dataclasses.replace(r, power=POWER.get(r.id, "")) for r in RULES]

CLAIMS = {r.id: r.claim for r in RULES}


def findings(df) -> list[Finding]:  # noqa: ANN001 - a results DataFrame from load_results
    """One verdict per declared finding of the paper (see :data:`RULES`)."""
    return judge_all(RULES, df)
