"""The experiment grid end to end at the smoke scale (slow): report, figures, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _make(out, *extra, target="all-scenarios", timeout=1500):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(["make", "-C", str(ROOT), target, "SCALE=smoke", f"OUT={out}",
                           *extra], capture_output=True, text=True, env=env, timeout=timeout)


def _results(out):
    return {p: p.stat().st_mtime_ns for p in out.glob("*/run*/r*/result.json")}


def test_smoke_grid_writes_the_report_and_resumes(tmp_path):
    out = tmp_path / "grid"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # Start the grid, kill it once a few cells are done, then run it again.
    log = tmp_path / "first-run.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(["make", "-C", str(ROOT), "all-scenarios", "SCALE=smoke",
                                 f"OUT={out}"], stdout=sink, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + 900
    while len(_results(out)) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    finished = _results(out)
    assert 4 <= len(finished) < 30, (len(finished), proc.returncode, log.read_text()[-3000:])
    done = _make(out)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _results(out)
    assert len(after) == 5 * 2 * 3
    for path, mtime in finished.items():  # nothing finished was computed again
        assert after[path] == mtime, path
    assert not list(out.rglob("*.tmp"))

    report = (out / "report" / "report.md").read_text()
    figures = sorted((out / "report" / "figures").glob("*.png"))
    assert len(figures) >= 4
    for fig in figures:
        assert f"figures/{fig.name}" in report
    for scenario in ("unstructured-deeplift", "unstructured-hydra", "structured-deeplift",
                     "structured-hydra", "unstructured-deeplift-grey"):
        assert scenario in report
    assert "ANOVA" in report
    row = json.loads(next(iter(out.glob("structured-deeplift/run1/r0.9/result.json")))
                     .read_text())
    assert row["granularity"] == "filter" and row["ratio"] == 0.9
    base = json.loads((out / "structured-deeplift/run1/r0/result.json").read_text())
    assert row["macs"] < 0.3 * base["macs"]  # structured cells are compacted: really smaller

    again = _make(out, "-q", target="grid-report", timeout=120)
    assert again.returncode == 0  # everything is up to date
