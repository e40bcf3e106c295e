"""The verdicts on the six findings of the first study (the paper's).

:data:`CLAIMS` states the paper's findings, :data:`RULES` summarises the rules that judge them
for the report, and :func:`findings` gives one :class:`~prunekit.stats.findings.Finding` per
claim, judged on a results table with the ANOVA of :mod:`prunekit.stats.tests` and the summaries
of :mod:`prunekit.stats.tables`. The rules are these.

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

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from prunekit.stats.findings import (
    _EPS,
    ALPHA,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARTLY,
    REPRODUCED,
    Finding,
    _aggregate,
    _cells,
    _Context,
    _missing,
    _p,
    _significant,
)
from prunekit.stats.loading import ANOVA_METRICS, LABELS, metrics_present
from prunekit.stats.tables import StdKind, ratio_label, summary
from prunekit.stats.tests import Comparison, _name, anova, comparisons, f_oneway_p

HALF_LATENCY = 0.65
GAP_CLOSED = 0.5

CLAIMS = {
    1: "mAP falls as the pruning ratio rises, sharply beyond about 60 %",
    2: "DeepLIFT scores beat HYDRA scores on mAP at 50–85 % for both granularities",
    3: "unstructured beats structured on mAP at 25–90 %",
    4: "structured pruning is faster, about half the latency of unstructured from 65 % on",
    5: "the score method does not change latency",
    6: "greyscale costs mAP at 0–65 %, and the gap closes at 95–99 %",
}


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
