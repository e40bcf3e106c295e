"""The verdicts section of a report, the declaration, and the calibration beside them.

A :class:`Study` names a study's declared rules (:mod:`prunekit.stats.findings.paper`,
:mod:`prunekit.stats.findings.kitti`), how its table is prepared, and the seed's own numbers
(:mod:`prunekit.stats.seeds`). :func:`judge` judges a results table and the seed's own table by
the same rules; :func:`findings_markdown` and :func:`findings_json` render both side by side;
:func:`rules_markdown` is the declaration alone (``prunekit stats --rules``), and
:func:`calibration_markdown` the measured error rates of the rules on simulated studies
(``data/calibration.json``, written by ``benchmarks/bench_calibration.py --write``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import pandas as pd

from prunekit.stats.findings import (
    INCONCLUSIVE,
    VERSION,
    Finding,
    Rule,
    declaration_markdown,
    judge_all,
)
from prunekit.stats.loading import LABELS, load_results
from prunekit.stats.tables import md_table


@dataclass(frozen=True)
class Study:
    """What judging one study needs."""

    name: str
    title: str
    rules: Sequence[Rule]
    prepare: Callable[[pd.DataFrame], pd.DataFrame]
    seed_table: Callable[[], pd.DataFrame] | None
    seed_label: str
    preamble: tuple[str, ...] = ()


def study(name: str) -> Study:
    """The study called ``paper``, ``kitti`` or ``schedule``."""
    from prunekit.stats import seeds

    if name == "schedule":
        from prunekit.stats.findings import schedule
        return Study("schedule", "The schedule study (one-shot, gradual and sensitivity-"
                     "allocated pruning under attack, `make schedule-study`)", schedule.RULES,
                     schedule.prepare, None, "a seed (none: the study asks its own questions)",
                     schedule.PREAMBLE)
    if name == "kitti":
        from prunekit.stats.findings import kitti
        return Study("kitti", "The second study (Deformable DETR pruned on KITTI, seeds/003)",
                     kitti.RULES, kitti.prepare, seeds.kitti_results,
                     "the study's own figures", kitti.PREAMBLE)
    from prunekit.stats.findings import paper
    return Study("paper", "The paper (HYDRA and DeepLIFT pruning of YOLOv3, seeds/000)",
                 paper.RULES, lambda df: df, seeds.paper_results,
                 "the paper's own data (Tables V–XIV)", paper.PREAMBLE)


@cache
def _seed_findings(name: str) -> tuple[Finding, ...]:
    s = study(name)
    if s.seed_table is None:
        return ()
    return tuple(judge_all(s.rules, s.prepare(load_results(s.seed_table())), beside=False))


def judge(s: Study, df: pd.DataFrame) -> tuple[list[Finding], list[Finding]]:
    """The findings on a prepared table, and on the seed's own numbers."""
    return judge_all(s.rules, df), list(_seed_findings(s.name))


def _runs(f: Finding) -> str:
    if f.verdict != INCONCLUSIVE or f.runs_needed is None:
        return ""
    return "more than 1,000" if not math.isfinite(f.runs_needed) or f.runs_needed > 1000 \
        else str(int(f.runs_needed))


def findings_json(found: Sequence[Finding], seed: Sequence[Finding]) -> tuple[list[dict], bytes]:
    """The findings as dicts (with the verdict on the seed's own numbers), and as the bytes of
    ``findings.json``."""
    by_id = {f.id: f for f in seed}
    rows = [{**f.as_dict(), "rules_version": VERSION,
             "seed_verdict": by_id[f.id].verdict if f.id in by_id else None} for f in found]
    return rows, (json.dumps(rows, indent=2, ensure_ascii=False) + "\n").encode()


def findings_markdown(s: Study, found: Sequence[Finding], seed: Sequence[Finding],
                      runs: int | None = None) -> list[str]:
    """The report's "Findings" section: the verdicts beside those on the seed's own numbers,
    then each finding's evidence; with ``runs`` (the table's runs per cell), the findings the
    calibration says that many runs cannot decide."""
    by_id = {f.id: f for f in seed}
    beside = sorted({m for f in found for m in f.beside})
    seeded = s.seed_table is not None
    header = ["#", "finding", "verdict", "cells passing",
              *[f"beside: {LABELS.get(m, m)} (`{m}`)" for m in beside],
              *([s.seed_label] if seeded else []), "runs per cell to decide"]
    rows = []
    for f in found:
        rows.append([f.id, f.claim, f"**{f.verdict}** (`{f.metric}`)",
                     f"{f.passed} of {f.cells}" if f.cells else "",
                     *[f.beside.get(m, "") for m in beside],
                     *([by_id[f.id].verdict if f.id in by_id else ""] if seeded else []),
                     _runs(f)])
    how = (f"the declared rules (version {VERSION}, under [How the verdicts are decided]"
           f"(#how-the-verdicts-are-decided))")
    blocks = ["## Findings",
              f"Each finding of the seed, judged on these results by {how}, and the same rules "
              f"on {s.seed_label}." if seeded else
              f"Each of the study's questions, judged on these results by {how}, declared "
              f"before the study was first run.",
              md_table(header, rows, numeric=False)]
    undecided = [f for f in found if f.verdict == INCONCLUSIVE]
    if undecided:
        blocks.append("Inconclusive at these runs: " + "; ".join(
            f"{f.id} ({_runs(f) or 'not decidable by more runs'} runs per cell would decide "
            f"it)" for f in undecided) + ".")
    if runs is not None and (line := underpowered(s, runs)):
        blocks.append(line)
    for f in found:
        blocks.append(f"### {f.id}. {f.claim}: {f.verdict}")
        blocks.append("\n".join(f"- {line}" for line in f.evidence))
        if f.id in by_id:
            blocks.append(f"On {s.seed_label}: **{by_id[f.id].verdict}** ("
                          + "; ".join(by_id[f.id].evidence[:1] + by_id[f.id].evidence[-1:])
                          + ")")
    return blocks


def most_runs(df: pd.DataFrame) -> int | None:
    """The most runs any (scenario, ratio) cell of a results table has."""
    if not {"scenario", "ratio", "run"} <= set(df.columns) or df.empty:
        return None
    return int(df.groupby(["scenario", "ratio"])["run"].nunique().max())


def underpowered(s: Study, runs: int) -> str:
    """One sentence naming the findings that, by the recorded calibration, ``runs`` runs per
    cell do not reproduce in 80 % of simulated studies where they are true ("" if none, or no
    calibration of this version)."""
    cal = calibration()
    if cal is None or cal.get("version") != VERSION or s.name not in cal.get("studies", {}):
        return ""
    c = cal["studies"][s.name]
    most = max(c["power_runs"])
    short = []
    for r in s.rules:
        if r.id not in c["fewest_runs"]:
            continue
        fewest = c["fewest_runs"][r.id]  # None: not even at the most runs tried
        if fewest is None:
            short.append(f"{r.id} (more than {most} runs)")
        elif fewest > runs:
            short.append(f"{r.id} ({fewest} runs)")
    if not short:
        return ""
    return (f"Power at {runs} run{'s' if runs != 1 else ''} per cell: by the calibration below, "
            f"even a true finding is reproduced in under 80 % of simulated studies at this run "
            "count for " + "; ".join(short) + " (the runs per cell at which it is; the rules' "
            "power notes say why).")


def rules_markdown(s: Study) -> str:
    """The declaration of a study's rules, with the calibration of this version."""
    return declaration_markdown(s.title, s.rules, s.preamble) + "\n" + calibration_markdown(s)


@cache
def calibration() -> dict | None:
    """The committed calibration (``data/calibration.json``), or None."""
    path = resources.files("prunekit.stats").joinpath("data", "calibration.json")
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def calibration_markdown(s: Study) -> str:
    """The rules' verdict rates on simulated studies, from the committed calibration."""
    cal = calibration()
    title = "### Calibration on simulated studies"
    if cal is None or cal.get("version") != VERSION or s.name not in cal.get("studies", {}):
        return (f"{title}\n\nNo calibration of version {VERSION} of the rules is recorded "
                f"(`benchmarks/bench_calibration.py --write` makes one).\n")
    c = cal["studies"][s.name]
    runs = [str(n) for n in c["runs"]]
    header = ["#"] + [f"true: reproduced at {n}" for n in runs] + \
        [f"false: reproduced or partly at {n}" for n in runs] + ["fewest runs for 80 %"]
    rows = []
    for r in s.rules:
        rate = c["rates"].get(r.id)
        if rate is None:
            continue
        fewest = c["fewest_runs"].get(r.id)
        rows.append([r.id] + [f"{rate['true'][n]:.0%}" for n in runs]
                    + [f"{rate['false'][n]:.1%}" for n in runs]
                    + [str(fewest) if fewest else f"more than {max(c['power_runs'])}"])
    return (f"{title}\n\n{c['studies']} simulated studies per truth and run count "
            f"(prunekit.stats.simulate): 'true' is the seed's effect sizes, 'false' the worse "
            f"of no effect and the opposite effect. Noise: {c['noise']}. The rules promise at "
            f"most 5 % false 'reproduced or partly'; 'fewest runs' is the smallest run count "
            f"per cell ({', '.join(map(str, c['power_runs']))} tried) at which a true finding "
            f"is reproduced in at least 80 % of the simulations.\n\n"
            + md_table(header, rows, numeric=False))
