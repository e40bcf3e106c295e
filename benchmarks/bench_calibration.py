"""The verdict rules on simulated studies: how often is a false finding called reproduced?

For each study and each truth (``seed``: every finding true with the seed's effect sizes;
``none`` and ``opposite``: every finding false, by no effect or by the opposite effect; see
:mod:`prunekit.stats.simulate`), STUDIES simulated results tables at each run count are judged
by the declared rules. Printed per finding: the share called reproduced when true (3 and 10 runs)
and the share called reproduced or partly reproduced when false (the worse of the two false
truths), and the fewest runs per cell, of those tried, at which a true finding is reproduced in
at least 80 % of the studies. Targets: at most 5 % false "reproduced or partly" for every
finding; a true finding reproduced in at least 80 % at 10 runs, or its rule's declaration says
why not (the power column).

The noise is measured: the run-to-run spread per ratio of this project's own default runs
(``--noise-paper runs/grid/results.csv``, ``--noise-kitti runs/kitti-study/results.csv``);
without them, the paper's own spread (first study) and stated defaults (second).
``--write`` records the result as ``prunekit/stats/data/calibration.json``, which the reports
and ``prunekit stats --rules`` print.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from prunekit.stats.findings import PARTLY, REPRODUCED, VERSION
from prunekit.stats.loading import load_results
from prunekit.stats.seeds import paper_results
from prunekit.stats.simulate import WORLDS, Noise, noise_from, rates
from prunekit.stats.verdicts import study

CALIBRATION = Path(__file__).resolve().parents[1] / "prunekit/stats/data/calibration.json"
FALSE_LIMIT = 0.05
TRUE_LIMIT = 0.8


def _noise(name: str, path: str | None) -> Noise:
    if path:
        return noise_from(load_results(path), name, f"the spread of {path}")
    if name == "paper":
        return noise_from(paper_results(), "paper", "the paper's own spread (Tables V–XIV)")
    return Noise()


def calibrate_study(name: str, noise: Noise, studies: int, runs: list[int],
                    power_runs: list[int], power_studies: int) -> tuple[dict, bool]:
    t = time.perf_counter()
    table = rates(name, noise, runs, studies)
    extra = [n for n in power_runs if n not in runs]
    if extra:  # the fewest runs: the true world only, at the other run counts
        table = pd.concat([table, rates(name, noise, [], power_studies, true_runs=extra)],
                          ignore_index=True)
    ok = True
    out = {"runs": runs, "power_runs": power_runs, "studies": studies,
           "power_studies": power_studies, "noise": noise.source,
           "noise_model": {k: {f"{r:g}": round(v, 6) for r, v in getattr(noise, k).items()}
                           for k in ("map", "log_latency", "log_seconds")},
           "rates": {}, "fewest_runs": {}}
    print(f"\n== {name}: {studies} studies per truth at {runs} runs, {power_studies} of the true "
          f"world at {extra} runs; noise: {noise.source} "
          f"({time.perf_counter() - t:.0f} s)")
    print(f"{'finding':>8} " + " ".join(f"{'true@' + str(n):>9}" for n in runs)
          + " " + " ".join(f"{'false@' + str(n):>9}" for n in runs) + f" {'fewest':>7}")
    for rule in study(name).rules:
        rows = table[table["finding"] == rule.id]
        true = {n: float(rows[(rows.world == "seed") & (rows.runs == n)][REPRODUCED].iloc[0])
                for n in sorted(set(runs) | set(power_runs))}
        false = {n: max(float(rows[(rows.world == w) & (rows.runs == n)][[REPRODUCED, PARTLY]]
                              .sum(axis=1).iloc[0]) for w in WORLDS if w != "seed")
                 for n in runs}
        fewest = next((n for n in sorted(power_runs) if true[n] >= TRUE_LIMIT), None)
        out["rates"][rule.id] = {"true": {str(n): true[n] for n in runs},
                                 "false": {str(n): false[n] for n in runs}}
        out["fewest_runs"][rule.id] = fewest
        missed = [n for n in runs if false[n] > FALSE_LIMIT]
        ok = ok and not missed
        print(f"{rule.id:>8} " + " ".join(f"{true[n]:>9.0%}" for n in runs) + " "
              + " ".join(f"{false[n]:>9.1%}" for n in runs)
              + f" {fewest or '>' + str(max(power_runs)):>7}"
              + ("  MISSED: false above 5 %" if missed else "")
              + ("" if true.get(10, 1) >= TRUE_LIMIT or rule.power else
                 "  (true below 80 % at 10 runs, and no power note in the declaration)"))
    return out, ok


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=500,
                        help="simulated studies per truth at 3 and at 10 runs")
    parser.add_argument("--power-studies", type=int, default=100,
                        help="simulated studies of the true world at the other run counts "
                             "(for the fewest runs that reproduce a finding)")
    parser.add_argument("--noise-paper", help="results.csv of the first study's default run")
    parser.add_argument("--noise-kitti", help="results.csv of the second study's default run")
    parser.add_argument("--study", choices=["paper", "kitti"], action="append")
    parser.add_argument("--write", action="store_true", help=f"write {CALIBRATION.name}")
    args = parser.parse_args()
    if args.studies < 1 or args.power_studies < 1:
        parser.error("--studies and --power-studies must be at least 1")
    runs, power_runs = [3, 10], [2, 3, 5, 10, 20, 50]
    result = {"version": VERSION, "studies": {}}
    ok = True
    for name in args.study or ["paper", "kitti"]:
        noise = _noise(name, args.noise_paper if name == "paper" else args.noise_kitti)
        result["studies"][name], good = calibrate_study(name, noise, args.studies, runs,
                                                        power_runs, args.power_studies)
        ok = ok and good
    print(f"\nfalse findings called reproduced or partly at most {FALSE_LIMIT:.0%}: "
          f"{'ok' if ok else 'MISSED'}")
    if args.write:
        if args.study and CALIBRATION.exists():  # one study again: keep the other's record
            old = json.loads(CALIBRATION.read_text())
            if old.get("version") == VERSION:
                result["studies"] = {**old["studies"], **result["studies"]}
        CALIBRATION.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(f"wrote {CALIBRATION}")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
