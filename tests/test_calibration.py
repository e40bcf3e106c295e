"""The verdict rules on simulated studies with known truths (prunekit.stats.simulate).

Without noise the worlds are exact: every finding must come out reproduced where it is true and
never reproduced or partly where it is false, which checks both the worlds and the rules'
direction. With the noise the calibration records (the spread of this project's default runs),
a seeded batch of simulated studies must keep false findings at or under 5 % "reproduced or
partly"; benchmarks/bench_calibration.py runs the full 500 per truth and prints the table.
"""

from __future__ import annotations

import numpy as np
import pytest

from prunekit.stats.findings import NOT_TESTABLE, PARTLY, REPRODUCED
from prunekit.stats.simulate import WORLDS, Noise, calibrate, kitti_world, paper_world
from prunekit.stats.verdicts import calibration, study

EXACT = Noise(map={0.0: 0.0}, log_latency={0.0: 0.0}, log_seconds={0.0: 0.0}, source="none")


def _recorded_noise(name: str) -> Noise:
    cal = calibration()
    model = (cal or {}).get("studies", {}).get(name, {}).get("noise_model")
    if model is None:
        return Noise()
    return Noise(**{k: {float(r): v for r, v in model[k].items()} for k in
                    ("map", "log_latency", "log_seconds")}, source="recorded")


@pytest.mark.parametrize("name", ["paper", "kitti"])
def test_exact_worlds(name: str) -> None:
    for world in WORLDS:
        t = calibrate(name, world, 3, 1, EXACT)
        if world == "seed":
            assert (t[REPRODUCED] == 1).all(), t[t[REPRODUCED] < 1].idxmax(axis=1).to_dict()
        else:
            wrong = t[(t[REPRODUCED] + t[PARTLY]) > 0]
            assert wrong.empty, (world, wrong.idxmax(axis=1).to_dict())
        assert (t[NOT_TESTABLE] == 0).all()


def test_the_worlds_are_the_seeds() -> None:
    from prunekit.stats.seeds import paper_results

    seed = paper_world("seed")["map_conf05"]
    means = paper_results().groupby(["scenario", "ratio"])["map_conf05"].mean()
    assert seed[("structured-hydra", 0.5)] == pytest.approx(means[("structured-hydra", 0.5)])
    detr = kitti_world("seed")["detr"]
    assert (detr["map"], detr["pruned"]["filter"][1]) == (0.117, 0.786)  # 0.092 / 0.117


@pytest.mark.slow
@pytest.mark.parametrize("name", ["paper", "kitti"])
def test_false_findings_are_rarely_reproduced(name: str) -> None:
    noise = _recorded_noise(name)
    for world in ("none", "opposite"):
        for runs in (3, 10):
            t = calibrate(name, world, runs, 40, noise, seed=7)
            rate = t[REPRODUCED] + t[PARTLY]
            assert rate.max() <= 0.05, (world, runs, rate[rate > 0.05].to_dict())


@pytest.mark.slow
def test_true_findings_at_ten_runs() -> None:
    """A true finding is reproduced at ten runs in at least 80 % of the studies, unless its
    rule's declaration says why it cannot be (``power``)."""
    name = "paper"
    t = calibrate(name, "seed", 10, 40, _recorded_noise(name), seed=7)
    for rule in study(name).rules:
        if not rule.power:
            assert t.loc[rule.id, REPRODUCED] >= 0.8, (rule.id, t.loc[rule.id].to_dict())
    assert np.isfinite(t.to_numpy()).all()


def test_the_report_names_the_findings_its_run_count_cannot_decide(monkeypatch) -> None:
    import pandas as pd

    import prunekit.stats.verdicts as verdicts
    from prunekit.stats.findings import VERSION

    s = study("paper")
    fewest = {r.id: 3 for r in s.rules} | {"5": None, "2": 10}
    monkeypatch.setattr(verdicts, "calibration", lambda: {"version": VERSION, "studies": {
        "paper": {"power_runs": [2, 3, 5, 10, 20, 50], "fewest_runs": fewest}}})
    line = verdicts.underpowered(s, 3)
    assert "Power at 3 runs per cell" in line
    assert "2 (10 runs)" in line and "5 (more than 50 runs)" in line and "6a" not in line
    assert verdicts.underpowered(s, 10).count(" runs)") == 1  # only 5 is left
    table = pd.DataFrame({"scenario": ["a"] * 4 + ["b"], "ratio": [0.5] * 4 + [0.9],
                          "run": [1, 2, 3, 3, 1]})
    assert verdicts.most_runs(table) == 3 and verdicts.most_runs(table.iloc[:0]) is None
