"""The step prefix of the Makefile (scripts/step): every heavy recipe through `$(LAUNCH)`, the
plans the studies print for Slurm, bounded retries, and the `[k/N]` progress lines."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MAKE_ENV, ROOT

STEP = ROOT / "scripts" / "step"
SRUN = "srun --exact -n1 --gpus=1"
# Smoke grid: data, baseline, validation subset; per run 2 robust models, 2 DeepLIFT and
# 4 HYDRA score files; 5 scenarios × 3 ratios of cells per run; collect; stats.
SMOKE_STEPS = {2: 3 + 2 * 8 + 2 * 15 + 2, 1: 3 + 8 + 15 + 2}


def _step_module():
    loader = importlib.machinery.SourceFileLoader("prunekit_step", str(STEP))
    spec = importlib.util.spec_from_loader("prunekit_step", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _make(*args, env=None, timeout=120):
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args],
                          capture_output=True, text=True, env={**MAKE_ENV, **(env or {})},
                          timeout=timeout)


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


def _steps(plan: str) -> list[str]:
    return [line for line in plan.splitlines() if line.startswith("scripts/step ")]


# ------------------------------------------------------------------------------- the plans

def test_paper_plan_runs_every_cell_through_the_prefix(tmp_path):
    data, out = tmp_path / "coco", tmp_path / "grid"
    data.mkdir()
    for name in ("train.json", "val.json"):
        (data / name).write_text("{}")
    plan = _make("-n", "all-scenarios", "SCALE=paper", f"OUT={out}", f"DATA={data}",
                 f"WEIGHTS={tmp_path / 'yolov3.weights'}", f"LAUNCH={SRUN}")
    assert plan.returncode == 0, plan.stderr[-2000:]
    steps = _steps(plan.stdout)
    cells = [s for s in steps if " grid cell " in s]
    assert len(cells) == 5 * 9 * 10  # scenarios × ratios × runs, ratio-0 copies included
    prefix = f" -- {SRUN} bash -o pipefail -c '"
    assert all(prefix in s for s in steps), [s for s in steps if prefix not in s][:3]
    stages = [s.split()[1] for s in steps]
    assert stages.count("cell") == 420 and stages.count("reuse") == 30
    assert stages.count("robust") == 20 and stages.count("deeplift") == 20
    assert stages.count("hydra") == 10 * 2 * 8
    assert {"baseline", "subset", "collect", "stats"} <= set(stages)
    assert not out.exists()  # a dry run writes nothing, progress file included


def test_kitti_full_plan_runs_through_the_prefix(tmp_path):
    out = tmp_path / "study"
    plan = _make("-n", "kitti-study", "SCALE=full", f"OUT={out}",
                 f"KITTI={tmp_path / 'kitti' / 'training'}", f"WEIGHTS={tmp_path / 'hf'}",
                 f"LAUNCH={SRUN}")
    assert plan.returncode == 0, plan.stderr[-2000:]
    steps = _steps(plan.stdout)
    assert all(f" -- {SRUN} bash -o pipefail -c '" in s for s in steps)
    stages = [s.split()[1] for s in steps]
    # 2 models × (14 ratios + ratio 0 in filter) × (1 pruned + 3 fine-tuned runs), and the
    # weight scenarios' ratio 0 copied from the filter ones
    assert stages.count("cell") == 2 * 15 * 4 and stages.count("reuse") == 2 * 4
    assert stages.count("baseline") == 2 and stages.count("score") == 4
    assert {"data", "subset", "collect", "stats"} <= set(stages)
    assert not out.exists()


def test_schedule_plan_runs_through_the_prefix(tmp_path):
    out = tmp_path / "study"
    # the data and baselines in tmp_path too, so that the plan is the whole study's
    plan = _make("-n", "schedule-study", f"OUT={out}", f"LAUNCH={SRUN}",
                 f"DATA={tmp_path / 'synth'}", f"KITTI_SYNTH={tmp_path / 'kitti-synth'}",
                 f"BASE={tmp_path / 'baseline'}", f"DETR_BASE={tmp_path / 'detr-baseline'}")
    assert plan.returncode == 0, plan.stderr[-2000:]
    steps = [s for s in _steps(plan.stdout) if f" {out} -- " in s]  # logged in the study
    assert all(f" -- {SRUN} bash -o pipefail -c '" in s for s in steps)
    stages = [s.split()[1] for s in steps]
    # per model and run: weight (one-shot, cubic) × 2 ratios, filter (one-shot, cubic,
    # sensitivity) × 2 ratios, and the control, once
    assert stages.count("cell") == 2 * 3 * (2 * 2 + 3 * 2 + 1)
    assert "reuse" not in stages
    assert stages.count("score") == 4 and stages.count("sensitivity") == 2
    assert {"robust", "subset", "collect", "stats"} <= set(stages)
    every = {s.split()[1] for s in _steps(plan.stdout)}
    assert {"data", "baseline", "robust"} <= every  # the baselines it starts from, when absent
    assert all(f" -- {SRUN} bash -o pipefail -c '" in s for s in _steps(plan.stdout))
    assert not out.exists()


def test_schedule_plan_gives_a_models_cubic_flags_to_its_cubic_cells_only(tmp_path):
    out = tmp_path / "study"
    flags = "--prune-end 150 --prune-every 10"
    plan = _make("-n", "schedule-study", f"OUT={out}", f"DATA={tmp_path / 'synth'}",
                 f"KITTI_SYNTH={tmp_path / 'kitti-synth'}", f"BASE={tmp_path / 'baseline'}",
                 f"DETR_BASE={tmp_path / 'detr-baseline'}",
                 "S_FT_yolov3-small=--steps 300 --batch-size 16 --lr 1e-3",
                 f"S_CUBIC_yolov3-small={flags}")
    assert plan.returncode == 0, plan.stderr[-2000:]
    cells = [s for s in _steps(plan.stdout) if " grid cell " in s]
    flagged = [s for s in cells if flags in s]
    assert len(flagged) == 3 * 2 * 2  # runs × (weight, filter) × ratios
    assert all("yolov3-small.weight.cubic" in s or "yolov3-small.filter.cubic" in s
               for s in flagged)
    assert all("--steps 300" in s for s in cells if "yolov3-small." in s)
    assert not any("--prune-end" in s for s in cells if s not in flagged)


def test_without_launch_a_step_is_plain_bash():
    plan = _make("-n", "all-scenarios", "SCALE=smoke", "OUT=/nonexistent/grid")
    steps = _steps(plan.stdout)
    assert len(steps) == SMOKE_STEPS[2]
    assert all(" /nonexistent/grid -- bash -o pipefail -c '" in s for s in steps)


# ------------------------------------------------------------------------- the wrapper

def test_labels_and_durations():
    step = _step_module()
    assert step.label_of("runs/grid/structured-deeplift/run1/r0.75/result.json",
                         "runs/grid") == "structured-deeplift run1 r0.75"
    assert step.label_of("runs/grid/run2/hydra-filter-r0.5.st", "runs/grid") == \
        "run2 hydra-filter-r0.5"
    assert step.label_of("/o/k/cells/yolov3-small.filter.pruned/run1/r0.1/result.json",
                         "/o/k") == "yolov3-small.filter.pruned run1 r0.1"
    assert step.label_of("/o/k/yolov3/baseline.st", "/o/k") == "yolov3 baseline"
    assert step.label_of("/o/g/report/report.md", "/o/g") == "report"
    assert step.label_of("/o/g/baseline/model.st", "/o/g") == "baseline"
    assert step.label_of("runs/baseline/model.st", "runs/grid") == "baseline"
    assert step.duration(31.4) == "31 s" and step.duration(24 * 60) == "24 min"
    assert step.duration(3 * 3600) == "3.0 h"


def test_the_command_is_one_argument_quotes_and_dollars_intact(tmp_path):
    # A Makefile that adds one target to the real one and runs a command full of quotes,
    # dollars, a pipe, && and redirects through $(call step,...).
    mk = tmp_path / "quoting.mk"
    mk.write_text("include Makefile\n$(T)/out.txt:\n"
                  "\t$(call step,quote,printf '%s\\n' \"it's $$FOO\" 'a \"b\" $$x' "
                  "| tr a-z A-Z > $@.tmp && echo \"done $$((1+2))\" >> $@.tmp && "
                  "mv $@.tmp $@,$(T))\n")
    made = _make("-f", str(mk), f"T={tmp_path}", f"{tmp_path}/out.txt", env={"FOO": "bar"})
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "out.txt").read_text() == "IT'S BAR\nA \"B\" $X\ndone 3\n"
    assert re.fullmatch(rf"quote {tmp_path}/out\.txt \d+\n", (tmp_path / "times.log").read_text())
    assert made.stdout.strip().splitlines()[-1].startswith("out  ")  # no counter: just the step
    assert "scripts/step" not in made.stdout  # silent recipe


def test_a_failed_step_is_retried_then_succeeds(tmp_path):
    # A launcher that fails the first time it sees a command, then runs it.
    flaky = _script(tmp_path / "flaky", f"""
marker={tmp_path}/seen-$(printf '%s' "$*" | md5sum | cut -c1-16)
if [ ! -e "$marker" ]; then touch "$marker"; echo "flaky: node lost" >&2; exit 3; fi
exec "$@"
""")
    out = tmp_path / "grid"
    made = _make(f"{out}/data/train.json", "SCALE=smoke", f"OUT={out}", f"LAUNCH={flaky}")
    assert made.returncode == 0, made.stderr[-2000:]
    assert "data train failed (exit 3); retry 1 of 2" in made.stderr
    assert (out / "data" / "train.json").exists()
    times = (out / "times.log").read_text().splitlines()
    assert len(times) == 1 and re.fullmatch(rf"data {out}/data/train\.json \d+", times[0])
    log = (out / "logs" / "data_train.log").read_text()  # both attempts, in the step's log
    assert "flaky: node lost" in log and "--- retry 1 of 2" in log


def test_with_no_retries_a_failed_step_fails_make(tmp_path):
    fails = _script(tmp_path / "fails", "echo 'no GPU here' >&2; exit 7\n")
    out = tmp_path / "grid"
    made = _make(f"{out}/data/train.json", "SCALE=smoke", f"OUT={out}", f"LAUNCH={fails}",
                 "RETRIES=0")
    assert made.returncode != 0
    assert "retry" not in made.stderr
    line = next(ln for ln in made.stderr.splitlines() if "failed" in ln)
    assert "data train failed (exit 7); log: " in line and f"target {out}/data/train.json" in line
    assert "no GPU here" in (out / "logs" / "data_train.log").read_text()
    assert not (out / "data" / "train.json").exists()
    assert not (out / "times.log").exists()
    # RETRIES=n with a launcher: n reruns, then the step fails with its label
    made = _make(f"{out}/data/train.json", "SCALE=smoke", f"OUT={out}", f"LAUNCH={fails}",
                 "RETRIES=1")
    assert made.returncode != 0
    assert made.stderr.count("retry 1 of 1") == 1
    assert "data train failed (exit 7) after 1 retry" in made.stderr


def test_without_launch_a_failed_step_is_not_retried(tmp_path):
    out = tmp_path / "grid"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train.json").write_text("{}")
    (out / "data" / "val.json").write_text("not json")
    made = _make(f"{out}/data/val-grid.json", "SCALE=smoke", f"OUT={out}")
    assert made.returncode != 0
    assert "retry" not in made.stderr
    assert re.search(r"^✗ data val-grid failed \(exit \d+\); log: ", made.stderr, re.M)


# ------------------------------------------------------------------------- the progress

def _progress(stdout: str) -> list[tuple[int, int, str]]:
    return [(int(m[1]), int(m[2]), m[3]) for m in
            re.finditer(r"^\[(\d+)/(\d+)\] (.+?)  \d+ s  · ", stdout, re.M)]


def test_progress_counts_every_step_of_the_grid(tmp_path):
    # A launcher that records each step and does nothing: the real grid's steps, in seconds.
    calls = tmp_path / "calls"
    ok = _script(tmp_path / "ok", f'echo "${{PRUNEKIT_PROGRESS:-unset}}" >> {calls}\n')
    out = tmp_path / "grid"
    made = _make("all-scenarios", "SCALE=smoke", f"OUT={out}", f"LAUNCH={ok}", "JOBS=2")
    assert made.returncode == 0, made.stderr[-2000:]
    n = SMOKE_STEPS[2]
    assert made.stdout.splitlines()[0] == f"{n} steps to run under {out} with JOBS=2"
    lines = _progress(made.stdout)
    assert [(k, total) for k, total, _ in lines] == [(k, n) for k in range(1, n + 1)]
    labels = {label for _, _, label in lines}
    assert {"data train", "baseline", "run1 robust-grey", "run2 hydra-filter-r0.9",
            "structured-deeplift run2 r0.5", "unstructured-hydra run1 r0", "report"} <= labels
    assert "about" in made.stdout and "all done in" in made.stdout.splitlines()[-1]
    assert "scripts/step" not in made.stdout + made.stderr  # recipes are silent by default
    recorded = calls.read_text().splitlines()
    assert recorded == ["0"] * n  # every step ran through LAUNCH, bars off with JOBS=2

    # Resuming counts only what is left: the data, its subset and the baseline exist (and
    # RUNS=1 this time, to be quick).
    for i, path in enumerate(("data/train.json", "data/val-grid.json", "baseline/model.st")):
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text("")
        os.utime(out / path, (1e9 + i, 1e9 + i))
    made = _make("all-scenarios", "SCALE=smoke", "RUNS=1", f"OUT={out}", f"LAUNCH={ok}",
                 "JOBS=2")
    lines = _progress(made.stdout)
    n = SMOKE_STEPS[1]
    assert [k for k, _, _ in lines] == list(range(1, n - 2))
    assert {total for _, total, _ in lines} == {n - 3}
    assert not {"data train", "data val-grid", "baseline"} & {label for _, _, label in lines}


def test_verbose_prints_the_commands_and_one_job_keeps_the_bars(tmp_path):
    calls = tmp_path / "calls"
    ok = _script(tmp_path / "ok", f'echo "${{PRUNEKIT_PROGRESS:-unset}}" >> {calls}\n')
    out = tmp_path / "grid"
    made = _make("all-scenarios", "SCALE=smoke", "RUNS=1", f"OUT={out}", f"LAUNCH={ok}",
                 "JOBS=1", "V=1")
    assert made.returncode == 0, made.stderr[-2000:]
    n = SMOKE_STEPS[1]
    assert [k for k, _, _ in _progress(made.stdout)] == list(range(1, n + 1))
    shown = [ln for ln in made.stdout.splitlines() if ln.startswith("scripts/step ")]
    assert len(shown) == n and all(f"-- {ok} bash -o pipefail -c '" in ln for ln in shown)
    assert set(calls.read_text().split()) == {"unset"}  # one job: its bars stay on


def test_progress_bar_is_off_when_asked(monkeypatch):
    from prunekit.cli._io import progress_bar

    monkeypatch.setenv("PRUNEKIT_PROGRESS", "0")
    assert progress_bar("x").disable
    monkeypatch.delenv("PRUNEKIT_PROGRESS")
    assert not progress_bar("x").disable


@pytest.mark.parametrize("argv", [[], ["cell", "t"], ["cell", "t", "d", "x", "true"]])
def test_bad_usage(argv):
    run = subprocess.run([str(STEP), *argv], capture_output=True, text=True)
    assert run.returncode == 2 and "usage:" in run.stderr


def test_time_left_costs_each_stage_at_its_own_mean():
    step = _step_module()
    state = {"total": 10, "done": 3, "plan": {"baseline": 1, "robust": 2, "cell": 7},
             "timed": {"baseline": (1, 800.0), "robust": (2, 20.0)}}
    # The cells, not timed yet, cost the repeated stages' mean (10 s), not the baseline's 800 s.
    assert step.time_left(state, 1) == pytest.approx(70.0)
    assert step.time_left(state, 2) == pytest.approx(35.0)
    state["timed"]["cell"] = (2, 60.0)
    state["done"] = 5
    assert step.time_left(state, 1) == pytest.approx(5 * 30.0)
    # Only a one-off step timed: no estimate yet rather than a wrong one.
    state = {"total": 3, "done": 1, "plan": {"baseline": 1, "cell": 2},
             "timed": {"baseline": (1, 800.0)}}
    assert step.time_left(state, 2) is None


def test_a_step_killed_after_writing_its_target_still_records_its_time(tmp_path):
    """make keeps a precious target a killed step had already written and never runs that step
    again, so the step records its time on the way out (the grid's seconds_score needs it);
    a step killed before its target exists records nothing."""
    import signal
    import time

    for writes in (True, False):
        target, logdir = tmp_path / f"t{writes}" / "scores.st", tmp_path / f"log{writes}"
        target.parent.mkdir()
        body = (f"echo done > {target}; " if writes else "") + "sleep 30"
        proc = subprocess.Popen([str(STEP), "scores", str(target), str(logdir), "--", "bash",
                                 "-c", body], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                target.exists() if writes else (logdir / "logs").exists()):
            time.sleep(0.1)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) != 0
        times = logdir / "times.log"
        if writes:
            assert re.fullmatch(rf"scores {target} \d+\n", times.read_text())
        else:
            assert not times.exists()
