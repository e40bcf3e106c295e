"""`make kitti-study` end to end at the smoke scale (slow: killed once and resumed), and the
full scale's plan printed without running it."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from tests.conftest import MAKE_ENV, ROOT, make_killed_after

_ENV = MAKE_ENV
# Smoke: two models × (pruned: 1 run, fine-tuned: 2 runs) × (filter 0, 10, 30, 50 % and weight
# 0, 10, 50, 90 %).
_CELLS = 2 * 3 * 8


def _make(out, *extra, target="kitti-study", timeout=1500):
    return subprocess.run(["make", "-C", str(ROOT), target, "SCALE=smoke", f"OUT={out}", *extra],
                          capture_output=True, text=True, env=_ENV, timeout=timeout)


def _results(out):
    return {p: p.stat().st_mtime_ns for p in out.glob("cells/*/run*/r*/result.json")}


@pytest.mark.slow
def test_smoke_study_writes_the_report_and_resumes(tmp_path):
    out = tmp_path / "study"
    log = tmp_path / "first-run.log"
    finished = make_killed_after(["kitti-study", "SCALE=smoke", f"OUT={out}"],
                                 lambda: _results(out), 6, log)
    assert 6 <= len(finished) < _CELLS, (len(finished), log.read_text()[-3000:])
    done = _make(out)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _results(out)
    assert len(after) == _CELLS
    for path, mtime in finished.items():  # nothing finished was computed again
        assert after[path] == mtime, path
    assert not list(out.rglob("*.tmp"))

    report = (out / "report" / "report.md").read_text()
    found = json.loads((out / "report" / "findings.json").read_text())
    from prunekit.stats.findings.kitti import RULES

    assert [f["id"] for f in found] == [r.id for r in RULES]
    for f in found:
        assert f"### {f['id']}. " in report and f["verdict"] in report
    figures = sorted((out / "report" / "figures").glob("*.png"))
    assert len(figures) >= 4
    for fig in figures:
        assert f"figures/{fig.name}" in report
    times = (out / "times.log").read_text()
    for stage in ("data", "baseline", "score", "cell", "stats"):
        assert f"{stage} " in times

    df = pd.read_csv(out / "results.csv")
    assert set(df["family"]) == {"deformable-detr", "yolov3"}
    assert {c for c in df.columns if c.startswith("map50.")} == \
        {"map50.easy", "map50.moderate", "map50.hard"}
    for c in ("ap.Car", "ap.Pedestrian", "ap.Cyclist", "latency_ms", "macs", "params_total",
              "params_nonzero", "bytes_stored", "compression_ratio"):
        assert c in df.columns, c
    pruned = df[df["finetune_steps"] == 0]
    assert set(pruned["run"]) == {1}
    assert set(df.loc[df["finetune_steps"] > 0, "run"]) == {1, 2}
    for model in ("deformable-detr-small", "yolov3-small"):
        cells = pruned[pruned["scenario"] == f"{model}.filter.pruned"].set_index("ratio")
        # Filter pruning is compacted: fewer parameters and MACs, really.
        assert cells.loc[0.5, "params_total"] < cells.loc[0.0, "params_total"]
        assert cells.loc[0.5, "macs"] < cells.loc[0.0, "macs"]
        weights = pruned[pruned["scenario"] == f"{model}.weight.pruned"].set_index("ratio")
        # Weight pruning keeps the shapes and zeroes weights: same MACs, fewer non-zeros.
        assert weights.loc[0.9, "params_total"] == weights.loc[0.0, "params_total"]
        assert weights.loc[0.9, "params_nonzero"] < 0.2 * weights.loc[0.0, "params_nonzero"]
        assert weights.loc[0.9, "bytes_stored"] < weights.loc[0.0, "bytes_stored"]

    again = _make(out, "-q", "STUDY=kitti", target="kitti-report", timeout=120)
    assert again.returncode == 0  # everything is up to date


def test_full_scale_plan_is_printed_without_running(tmp_path):
    kitti, weights = tmp_path / "kitti" / "training", tmp_path / "detr-hf"
    out = tmp_path / "study"
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), "kitti-study", "SCALE=full",
                           f"OUT={out}", f"KITTI={kitti}", f"WEIGHTS={weights}"],
                          capture_output=True, text=True, env=_ENV, timeout=120)
    assert plan.returncode == 0, plan.stderr[-2000:]
    text = plan.stdout
    assert f"data kitti {kitti}" in text and "--dontcare ignore" in text
    assert f"init --hf {weights} --img-size 384" in text
    assert "init yolov3 --img-size 416" in text
    assert "--device cuda" in text
    cells = [line for line in text.splitlines() if "grid cell" in line and "--reuse" not in line]
    # 2 models × (14 ratios + ratio 0 in filter) × (1 pruned run + 3 fine-tuned runs)
    assert len(cells) == 2 * 15 * 4
    assert not out.exists()  # nothing ran


def test_full_scale_without_kitti_is_refused_in_one_line(tmp_path):
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), "kitti-study", "SCALE=full",
                           f"OUT={tmp_path / 'study'}"], capture_output=True, text=True,
                          env=_ENV, timeout=120)
    assert plan.returncode != 0
    assert "give KITTI=path/to/training" in plan.stderr
