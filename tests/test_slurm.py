"""The first study's smoke grid on a real one-node Slurm cluster (slow; root, as in CI).

scripts/slurm-local installs Debian's slurm-wlm, munge and slurmdbd (sacct needs accounting) and
starts the daemons; the shipped examples/slurm/all-scenarios.sbatch runs the grid, every step a
job step. One cell's process is killed mid-way (a node losing a process): its step fails, is
retried, and the grid still completes with the local run's numbers.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import MAKE_ENV, ROOT

pytestmark = pytest.mark.slow

# Columns that measure time, or name the run's folder: not expected to repeat.
UNSTABLE = ("latency_ms", "latency_iqr_ms", "reused_from", "bytes_stored", "compression_ratio")


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 and not shutil.which("sinfo"):
        pytest.skip("starting a Slurm cluster needs root (apt, daemons)")
    where = Path(f"/tmp/pk-slurm-{os.getpid()}")
    script = str(ROOT / "scripts" / "slurm-local")
    started = subprocess.run([script, "start", str(where)], capture_output=True, text=True,
                             timeout=900)
    assert started.returncode == 0, started.stderr[-3000:]
    env = {**MAKE_ENV, "SLURM_CONF": str(where / "etc" / "slurm.conf")}
    yield env
    subprocess.run([script, "stop", str(where)], capture_output=True, timeout=300)
    shutil.rmtree(where, ignore_errors=True)


def _rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    key = ("scenario", "run", "ratio")
    return {tuple(r[k] for k in key): {k: v for k, v in r.items()
                                      if k not in UNSTABLE and not k.startswith("seconds_")}
            for r in rows}


def _kill_one_cell(stop: threading.Event, killed: list, out: Path):
    """SIGKILL the first `prunekit grid cell` process of a structured-deeplift cell at ratio 0.9
    (pruned, compacted and fine-tuned: a cell with real work in it) writing under ``out`` (not
    one of another test's grids: `make test` runs two test files at once)."""
    while not stop.is_set() and not killed:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"cell" in cmd and b"structured-deeplift" in cmd and b"prunekit" in cmd[1] \
                    and b"0.9" in cmd and any(bytes(out) in c for c in cmd):
                time.sleep(0.5)  # mid-way, not before it started
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append([c.decode() for c in cmd])
                return
        time.sleep(0.2)


def _steps(job, env, expected):
    """sacct's steps of a job (ID, name, state), once the database has them all."""
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(["sacct", "-j", job, "-n", "-P", "-o", "JobID,JobName,State"],
                             capture_output=True, text=True, env=env).stdout
        rows = [line.split("|") for line in out.splitlines() if "." in line.split("|")[0]]
        rows = [r for r in rows if r[0].split(".")[1].isdigit()]  # job steps, not batch/extern
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def test_the_smoke_grid_runs_as_slurm_job_steps(cluster, smoke_grid, tmp_path):
    local, _ = smoke_grid
    out = tmp_path / "grid"
    log = tmp_path / "job.out"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_cell, args=(stop, killed, out))
    killer.start()
    try:
        job = subprocess.run(
            ["sbatch", "--wait", "--parsable", "--ntasks=2", "--cpus-per-task=1",
             "--gpus-per-task=0", "--mem-per-cpu=1G", f"--output={log}", f"--chdir={ROOT}",
             str(ROOT / "examples" / "slurm" / "all-scenarios.sbatch"), "SCALE=smoke", "RUNS=1",
             f"OUT={out}"], capture_output=True, text=True, env=cluster, timeout=2400)
    finally:
        stop.set()
        killer.join()
    text = log.read_text() if log.exists() else ""
    assert job.returncode == 0, (job.stderr[-2000:], text[-4000:])
    assert killed, "no cell process was seen to kill"
    assert "↻" in text and "retry 1 of 2" in text, text[-4000:]

    # The same numbers as the local run's first run (timings aside): one run of the grid is
    # every kind of step, at half the time of the local run's two.
    first = {k: v for k, v in _rows(local / "results.csv").items() if k[1] == "1"}
    assert len(first) == 15 and _rows(out / "results.csv") == first
    assert (out / "report" / "report.md").exists()

    # Every step of the grid was a job step named after it; each cell's step completed (the
    # killed one after a failed first attempt).
    total = int(text.split(" steps to run", 1)[0].split()[-1])
    steps = _steps(job.stdout.strip().split(";")[0], cluster, total + 1)
    names = [name for _, name, state in steps if state == "COMPLETED"]
    assert len(names) == total, steps
    cells = {f"{p.parent.parent.parent.name}:{p.parent.parent.name}:{p.parent.name}"
             for p in local.glob("*/run1/r*/result.json")}
    assert len(cells) == 15 and cells <= set(names), sorted(set(names))[:10]
    assert [state for _, _, state in steps].count("COMPLETED") == total
    assert any(state != "COMPLETED" for _, _, state in steps), steps
