"""The verdicts on the five findings of the second study (Deformable DETR pruned on KITTI).

The input is the long table `make kitti-study` collects: one row per scenario × run × ratio, a
scenario being ``<model>.<granularity>.<state>`` (``deformable-detr-small.filter.pruned``), with
the columns ``family`` (``deformable-detr`` or ``yolov3``), ``granularity`` (``filter``: L1 filter
pruning, compacted; ``weight``: magnitude weight pruning), ``finetune_steps`` (0: measured
straight after pruning, the study's ``pruned`` state; more: the ``finetuned`` state, several
runs) and the metrics. Ratio 0 is the unpruned model (fine-tuned the same number of steps in the
``finetuned`` state: the control for the fine-tune itself).

:data:`CLAIMS` states the study's findings, :data:`RULES` the rules that judge them, and
:func:`findings` gives one :class:`~prunekit.stats.findings.Finding` per claim.

Verdict rules
-------------

Accuracy is the clean ``map`` relative to the same model's unpruned ``map`` (``retained``: 1 is no
loss), so that two detectors of different accuracy compare. The study measured its models straight
after pruning, so findings 1 and 4 are judged on the ``pruned`` state and the ``finetuned`` state
is given beside them; the ``pruned`` state has one run per cell (magnitude and L1 pruning are
deterministic), so tests over runs use the ``finetuned`` state. "Significant" is Welch's t-test
(two groups: the same as the one-way ANOVA of the first study, without assuming equal variances)
with p < ``ALPHA``. The Deformable DETR model is the study's; a finding about "the model" is
judged on it.

1. *Filter pruning is the least robust: accuracy collapses fast (more than 20 % lost early, 0 mAP
   from 30 %).* (a) at every ratio both methods share, filter pruning retains less than weight
   pruning; (b) at the first filter ratio (10 %) more than 20 % of mAP is lost; (c) from 30 % on
   filter pruning retains at most ``COLLAPSED`` (5 %) of mAP. All three: reproduced; (a), the
   "least robust", without the whole collapse: partly; otherwise not reproduced.
2. *50 % filter pruning removes about a quarter of the FLOPs, with only a minor runtime gain.*
   (a) "about a quarter": the MACs removed at 50 % are within ``QUARTER`` (15–35 %); (b) "minor
   runtime gain": the latency speed-up of the pruned model is below ``MINOR_GAIN`` (1.1×).
   prunekit compacts filter-pruned models, so (b) failing is the expected outcome here: the
   evidence gives the real speed-up and its speed-up per MACs reduction. Both: reproduced; one:
   partly; neither: not reproduced.
3. *Weight pruning reduces storage but gives no speed-up.* (a) the checkpoint at the largest
   weight ratio is smaller than the unpruned one by at least a third (compression ratio ≥ 1.5);
   (b) no speed-up: at every weight ratio the latency is at least ``1 / MINOR_GAIN`` of the
   unpruned model's: no weight ratio is 10 % or more faster with p < ``ALPHA``. Both:
   reproduced; one: partly; neither: not reproduced.

   Latency (2 and 3) pools both states of a ratio: pruning fixes the architecture and the
   fine-tune changes only weights, so each ratio has 1 + RUNS measurements; one measurement
   per cell, taken beside another job on a shared machine, varies by 10–20 %.
4. *Weight pruning holds up to 30–40 % sparsity and collapses beyond 50–70 %.* (a) at every
   weight ratio up to 40 % at least ``HOLDS`` (90 %) of mAP is retained; (b) the first ratio at
   which less than half is retained (the collapse) lies in 50–80 % ("beyond 50–70 %"). Both:
   reproduced; one: partly; neither: not reproduced.
5. *Deformable DETR is more sensitive to pruning than a CNN detector* (beyond the study: against
   YOLOv3 pruned the same way on the same data). Per method, at each ratio of the ``finetuned``
   state, DETR's retained mAP against YOLOv3's (Welch's t-test over runs); the ``pruned`` state's
   means are given beside. DETR is more sensitive under a method when it retains significantly
   less at more than half of the ratios tested and significantly more at none. Both methods:
   reproduced; one method, or DETR retaining less on average in both states: partly; otherwise
   not reproduced. Without YOLOv3 in the table: not testable here. (Judged per method since the
   first default run: the two methods can point opposite ways, which a pooled count hides.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from prunekit.stats.findings import (
    ALPHA,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARTLY,
    REPRODUCED,
    Finding,
    _p,
)
from prunekit.stats.tables import ratio_label

#: At most this share of the unpruned mAP retained counts as "0 mAP" (collapsed).
COLLAPSED = 0.05
#: "About a quarter" of the FLOPs removed.
QUARTER = (0.15, 0.35)
#: A speed-up below this is "minor" (and a latency ratio above its inverse "no speed-up").
MINOR_GAIN = 1.1
#: Retaining at least this share of mAP is "holding up".
HOLDS = 0.9
#: The collapse of weight pruning: less than this share retained.
HALF = 0.5
DETR = "deformable-detr"
CNN = "yolov3"

CLAIMS = {
    1: "Filter pruning is the least robust: accuracy collapses fast (the study: more than 20 % "
       "lost early, 0 mAP from 30 %)",
    2: "50 % filter pruning removes about a quarter of the FLOPs, with only a minor runtime gain",
    3: "Weight pruning reduces storage but gives no speed-up",
    4: "Weight pruning holds up to 30–40 % sparsity and collapses beyond 50–70 %",
    5: "Deformable DETR is more sensitive to pruning than a CNN detector (YOLOv3 on the same data)",
}

RULES = {
    1: "Pruned state, retained mAP (pruned / unpruned): (a) filter < weight at every shared "
       "ratio; (b) more than 20 % lost at the first filter ratio; (c) at most "
       f"{COLLAPSED:.0%} retained from 30 % on. (a)–(c): reproduced; (a) alone or with (b) or "
       "(c): partly.",
    2: f"(a) MACs removed at 50 % filter pruning within {QUARTER[0]:.0%}–{QUARTER[1]:.0%}; (b) "
       f"latency speed-up below {MINOR_GAIN}× (the study did not compact; prunekit does, so (b) "
       "is expected to fail and the evidence says by how much). Both: reproduced; one: partly.",
    3: "(a) compression ratio ≥ 1.5 at the largest weight ratio; (b) no weight ratio 10 % or more "
       f"faster than the unpruned model with Welch's p < {ALPHA} (latency pooled over both states "
       "of a ratio: same architecture). Both: reproduced; one: partly.",
    4: f"Pruned state: (a) at least {HOLDS:.0%} of mAP retained at every weight ratio ≤ 40 %; (b) "
       f"the first ratio retaining less than {HALF:.0%} lies in 50–80 %. Both: reproduced; one: "
       "partly.",
    5: "Fine-tuned state, per method and ratio: Welch's t-test of DETR's retained mAP against "
       f"YOLOv3's. A method shows DETR more sensitive when it is significantly lower (p < {ALPHA}) "
       "at more than half of the ratios and significantly higher at none. Both methods: "
       "reproduced; one, or lower on average in both states: partly.",
}


@dataclass
class _Study:
    """Mean retained mAP and latency per (model, granularity, state, ratio), and the runs."""

    df: pd.DataFrame

    def models(self, family: str) -> list[str]:
        return sorted(self.df.loc[self.df["family"] == family, "model"].unique())

    def cells(self, model: str, granularity: str, state: str) -> pd.DataFrame:
        sub = self.df[(self.df["model"] == model) & (self.df["granularity"] == granularity)
                      & (self.df["state"] == state)]
        return sub.sort_values(["ratio", "run"])

    def mean(self, model: str, granularity: str, state: str, metric: str) -> pd.Series:
        """Mean of ``metric`` per ratio."""
        return self.cells(model, granularity, state).groupby("ratio")[metric].mean()


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """The study's table with ``model``, ``state`` (pruned / finetuned) and ``retained`` (clean
    mAP over the same model, granularity and state's mean mAP at ratio 0) added."""
    df = df.copy()
    parts = df["scenario"].str.split(".")
    df["model"] = parts.str[0]
    df["state"] = np.where(df["finetune_steps"].fillna(0) > 0, "finetuned", "pruned")
    base = df[df["ratio"] == 0].groupby(["model", "granularity", "state"])["map"].mean()
    keys = list(zip(df["model"], df["granularity"], df["state"], strict=True))
    dense = pd.Series([base.get(k, math.nan) for k in keys], index=df.index)
    df["retained"] = df["map"] / dense.where(dense > 0)
    return df


def _pct(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.1%}"


def _welch(a: pd.Series, b: pd.Series) -> float:
    from scipy.stats import ttest_ind

    a, b = a.dropna().to_numpy(float), b.dropna().to_numpy(float)
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def _finding1(st: _Study) -> Finding:
    evidence, verdicts = [], []
    for model in st.models(DETR) + st.models(CNN):
        filt = st.mean(model, "filter", "pruned", "retained")
        weight = st.mean(model, "weight", "pruned", "retained")
        filt, weight = filt[filt.index > 0], weight[weight.index > 0]
        if filt.empty:
            continue
        shared = [r for r in filt.index if r in weight.index]
        a = bool(shared) and all(filt[r] < weight[r] for r in shared)
        first = filt.index.min()
        b = 1 - filt[first] > 0.2
        late = filt[filt.index >= 0.3 - 1e-9]
        c = not late.empty and bool((late <= COLLAPSED).all())
        tuned = st.mean(model, "filter", "finetuned", "retained")
        evidence.append(
            f"{model}, pruned: filter retains "
            + ", ".join(f"{_pct(v)} at {ratio_label(r)}" for r, v in filt.items())
            + "; weight at the same ratios "
            + ", ".join(f"{_pct(weight[r])}" for r in shared)
            + f" → (a) filter below weight everywhere: {a}; (b) more than 20 % lost at "
              f"{ratio_label(first)}: {b}; (c) at most {COLLAPSED:.0%} from 30 %: {c}")
        if not tuned.empty:
            evidence.append(f"{model}, fine-tuned (mean over runs): filter retains "
                            + ", ".join(f"{_pct(v)} at {ratio_label(r)}"
                                        for r, v in tuned.items() if r > 0))
        if model in st.models(DETR):
            verdicts.append(REPRODUCED if a and b and c else PARTLY if a else NOT_REPRODUCED)
    return Finding(1, CLAIMS[1], verdicts[0] if verdicts else NOT_TESTABLE, evidence)


def _speedups(st: _Study, model: str, granularity: str) -> pd.DataFrame:
    """Latency speed-up and MACs removed per ratio against ratio 0. A pruned model has the same
    architecture in both states (the fine-tune changes weights, not shapes), so the latency of
    a ratio pools the runs of both: four measurements per ratio instead of one. ``p``: Welch's
    test of the ratio's latencies against ratio 0's."""
    cells = st.df[(st.df["model"] == model) & (st.df["granularity"] == granularity)]
    lat = cells.groupby("ratio")["latency_ms"]
    if 0 not in lat.groups:
        return pd.DataFrame()
    base = cells.loc[cells["ratio"] == 0, "latency_ms"]
    macs = cells.groupby("ratio")["macs"].mean()
    p = {r: _welch(cells.loc[cells["ratio"] == r, "latency_ms"], base) for r in lat.groups}
    return pd.DataFrame({"speedup": lat.mean()[0] / lat.mean(),
                         "macs_removed": 1 - macs / macs[0], "latency_ms": lat.mean(),
                         "n": lat.count(), "p": pd.Series(p)})


def _finding2(st: _Study) -> Finding:
    evidence, verdict = [], None
    for model in st.models(DETR) + st.models(CNN):
        s = _speedups(st, model, "filter")
        at = [r for r in s.index if abs(r - 0.5) < 1e-9]
        if not at:
            continue
        row = s.loc[at[0]]
        a = QUARTER[0] <= row["macs_removed"] <= QUARTER[1]
        b = row["speedup"] < MINOR_GAIN
        reduction = 1 / (1 - row["macs_removed"])
        evidence.append(
            f"{model}, 50 % filter pruning, compacted: {_pct(row['macs_removed'])} of the MACs "
            f"removed (×{reduction:.2f}; the study: about 24 %) → (a) about a quarter: {a}; "
            f"latency {s.loc[0, 'latency_ms']:.1f} → {row['latency_ms']:.1f} ms (mean of "
            f"{int(row['n'])} measurements, Welch's p {_p(row['p'])}), a ×{row['speedup']:.2f} "
            f"speed-up, {row['speedup'] / reduction:.2f} of the MACs reduction → (b) only a "
            f"minor gain: {b}")
        if verdict is None:
            verdict = REPRODUCED if a and b else PARTLY if a or b else NOT_REPRODUCED
    return Finding(2, CLAIMS[2], verdict or NOT_TESTABLE, evidence)


def _count(n: pd.Series) -> str:
    lo, hi = int(n.min()), int(n.max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _finding3(st: _Study) -> Finding:
    evidence, verdict = [], None
    for model in st.models(DETR) + st.models(CNN):
        cells = st.cells(model, "weight", "pruned")
        s = _speedups(st, model, "weight")
        if cells.empty or s.empty or len(s) < 2:
            continue
        top = cells["ratio"].max()
        comp = float(cells.loc[cells["ratio"] == top, "compression_ratio"].mean())
        dense_bytes = float(cells.loc[cells["ratio"] == 0, "bytes_stored"].mean())
        top_bytes = float(cells.loc[cells["ratio"] == top, "bytes_stored"].mean())
        a = comp >= 1.5
        pruned = s[s.index > 0]
        faster = pruned[(pruned["speedup"] >= MINOR_GAIN) & (pruned["p"] < ALPHA)]
        b = faster.empty
        evidence.append(
            f"{model}: checkpoint {dense_bytes / 1e6:.2f} MB unpruned, {top_bytes / 1e6:.2f} MB "
            f"at {ratio_label(top)} (compression ×{comp:.2f}) → (a) storage reduced: {a}; "
            f"latency speed-up per weight ratio (Welch's p against the unpruned model, "
            f"{_count(pruned['n'])} measurements each) "
            + ", ".join(f"×{v.speedup:.2f} (p {_p(v.p)})" for v in pruned.itertuples())
            + f" → (b) none significantly ×{MINOR_GAIN} or more faster: {b}")
        if verdict is None:
            verdict = REPRODUCED if a and b else PARTLY if a or b else NOT_REPRODUCED
    return Finding(3, CLAIMS[3], verdict or NOT_TESTABLE, evidence)


def _finding4(st: _Study) -> Finding:
    evidence, verdict = [], None
    for model in st.models(DETR) + st.models(CNN):
        kept = st.mean(model, "weight", "pruned", "retained")
        kept = kept[kept.index > 0]
        if kept.empty:
            continue
        early = kept[kept.index <= 0.4 + 1e-9]
        a = not early.empty and bool((early >= HOLDS).all())
        low = kept[kept < HALF]
        collapse = float(low.index.min()) if not low.empty else math.nan
        b = 0.5 - 1e-9 <= collapse <= 0.8 + 1e-9
        evidence.append(
            f"{model}, pruned: weight pruning retains "
            + ", ".join(f"{_pct(v)} at {ratio_label(r)}" for r, v in kept.items())
            + f" → (a) at least {HOLDS:.0%} up to 40 %: {a}; (b) first below {HALF:.0%} at "
            + ("no ratio" if math.isnan(collapse) else ratio_label(collapse))
            + f", in 50–80 %: {b}")
        tuned = st.mean(model, "weight", "finetuned", "retained")
        if not tuned.empty:
            evidence.append(f"{model}, fine-tuned (mean over runs): "
                            + ", ".join(f"{_pct(v)} at {ratio_label(r)}"
                                        for r, v in tuned.items() if r > 0))
        if verdict is None:
            verdict = REPRODUCED if a and b else PARTLY if a or b else NOT_REPRODUCED
    return Finding(4, CLAIMS[4], verdict or NOT_TESTABLE, evidence)


def _finding5(st: _Study) -> Finding:
    detr, cnn = st.models(DETR), st.models(CNN)
    if not detr or not cnn:
        return Finding(5, CLAIMS[5], NOT_TESTABLE,
                       ["needs both a Deformable DETR and a YOLOv3 model in the results"])
    d, c = detr[0], cnn[0]
    evidence, held = [], {}
    gaps: dict[str, list[float]] = {"pruned": [], "finetuned": []}
    for granularity in ("filter", "weight"):
        lower = higher = tested = 0
        for state in ("pruned", "finetuned"):
            a, b = st.cells(d, granularity, state), st.cells(c, granularity, state)
            ratios = sorted(set(a["ratio"]) & set(b["ratio"]) - {0})
            parts = []
            for r in ratios:
                ra, rb = a.loc[a["ratio"] == r, "retained"], b.loc[b["ratio"] == r, "retained"]
                gaps[state].append(float(ra.mean() - rb.mean()))
                text = f"{ratio_label(r)} {_pct(ra.mean())} vs {_pct(rb.mean())}"
                if state == "finetuned":
                    p = _welch(ra, rb)
                    if math.isfinite(p):
                        tested += 1
                        lower += ra.mean() < rb.mean() and p < ALPHA
                        higher += ra.mean() > rb.mean() and p < ALPHA
                    text += f" (p {_p(p)})"
                parts.append(text)
            if parts:
                evidence.append(f"{granularity}, {state}: retained mAP {d} vs {c}: "
                                + "; ".join(parts))
        if tested:
            held[granularity] = lower > tested / 2 and higher == 0
            evidence.append(f"{granularity}, fine-tuned: DETR significantly lower at {lower} of "
                            f"{tested} ratios, higher at {higher} → more sensitive: "
                            f"{held[granularity]}")
    mean_gap = {k: float(np.mean(v)) if v else math.nan for k, v in gaps.items()}
    evidence.append(f"mean retained-mAP gap (DETR − YOLOv3): pruned {mean_gap['pruned']:+.3f}, "
                    f"fine-tuned {mean_gap['finetuned']:+.3f}")
    if held and all(held.values()):
        verdict = REPRODUCED
    elif any(held.values()) or all(math.isfinite(v) and v < 0 for v in mean_gap.values()):
        verdict = PARTLY
    elif not gaps["pruned"] and not gaps["finetuned"]:
        verdict = NOT_TESTABLE
    else:
        verdict = NOT_REPRODUCED
    return Finding(5, CLAIMS[5], verdict, evidence)


def findings(df: pd.DataFrame) -> list[Finding]:
    """One verdict per finding of the second study, from :func:`prepare`'s table."""
    st = _Study(df)
    return [_finding1(st), _finding2(st), _finding3(st), _finding4(st), _finding5(st)]
