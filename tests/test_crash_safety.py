"""Crash safety, tested: SIGKILL at seeded random moments, a full disk, two writers on one path.

Every command is run once uninterrupted (the reference), then started again and killed with
SIGKILL at a seeded random moment of its reference run time, 7 times per command (8 commands:
56 kills). After each kill the output path holds nothing or a complete, valid output; a rerun
(with --resume where it exists) then ends with the reference's result. SOURCE_DATE_EPOCH makes
the history's time stamps, and so the files, repeat byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunekit import checkpoint

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "SOURCE_DATE_EPOCH": "1767225600"}
PK = [sys.executable, "-m", "prunekit"]
KILLS_PER_COMMAND = 7
# What a grid cell measures about time or where it ran: not expected to repeat.
TIMED = ("latency_ms", "latency_iqr_ms", "threads")


def _run(args, **kw):
    result = subprocess.run([*PK, *args], env=ENV, capture_output=True, text=True, timeout=300,
                            **kw)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    _run(["data", "synth", str(d / "data"), "--train", "24", "--val", "8", "--size", "64",
          "--seed", "0"])
    _run(["init", "yolov3-small", "--dataset", str(d / "data" / "train.json"), "--img-size",
          "64", "--width", "0.125", "--seed", "0", "-o", str(d / "base.st")])
    _run(["score", "--method", "magnitude", str(d / "base.st"), "-o", str(d / "scored.st")])
    _run(["detect", str(d / "base.st"), "--data", str(d / "data" / "val.json"), "--conf",
          "0.001", "--device", "cpu", "-o", str(d / "dets.csv")])
    return d


def _commands(d: Path) -> dict[str, list[str]]:
    """Each command's arguments; the output path is appended (-o OUT, or OUT for a cell)."""
    train, val = str(d / "data" / "train.json"), str(d / "data" / "val.json")
    return {
        "init": ["init", "yolov3-small", "--classes", "3", "--img-size", "64", "--width",
                 "0.125", "--seed", "1", "-o"],
        "score": ["score", "--method", "hydra", str(d / "base.st"), "--data", train,
                  "--ratio", "0.5", "--steps", "3", "--batch-size", "8", "--workers", "0",
                  "--device", "cpu", "-o"],
        "mask": ["mask", str(d / "scored.st"), "--ratio", "0.5", "--granularity", "filter",
                 "--compact", "-o"],
        "finetune": ["finetune", str(d / "base.st"), "--data", train, "--steps", "12",
                     "--batch-size", "4", "--workers", "0", "--device", "cpu",
                     "--save-every", "2", "--bn-batches", "2", "-o"],
        "attack": ["attack", str(d / "base.st"), "--data", val, "--device", "cpu", "--seed",
                   "4", "-o"],
        "detect": ["detect", str(d / "base.st"), "--data", val, "--conf", "0.001",
                   "--attack", "pgd", "--steps", "2", "--device", "cpu", "-o"],
        "evaluate": ["evaluate", str(d / "dets.csv"), "--gt", val, "-o"],
        "cell": ["grid", "cell", str(d / "scored.st"), "--scenario", "structured-deeplift",
                 "--run", "1", "--ratio", "0.5", "--granularity", "filter", "--data", train,
                 "--val", val, "--steps", "2", "--batch-size", "4", "--bench-seconds", "0.05",
                 "--threads", "1"],
    }


SUFFIX = {"init": ".st", "score": ".st", "mask": ".st", "finetune": ".st", "attack": "",
          "detect": ".csv", "evaluate": ".json", "cell": ""}


def _argv(name: str, args: list[str], out: Path) -> list[str]:
    if name == "cell":  # grid cell OUT_DIR comes after the scores
        return [*args[:3], str(out), *args[3:]]
    return [*args, str(out)]


def _result(name: str, out: Path):
    """The output, read for comparison; None when absent. Fails on an incomplete output."""
    if name == "cell":
        path = out / "result.json"
        if not path.exists():
            return None
        row = json.loads(path.read_text())
        return {k: v for k, v in row.items() if k not in TIMED and not k.startswith("seconds")}
    if not out.exists():
        return None
    if name == "attack":
        coco = json.loads((out / "val.json").read_text())
        files = sorted(p for p in out.rglob("*.png"))
        assert len(files) == len(coco["images"]), "an incomplete attack folder"
        return {"json": coco, **{str(p.relative_to(out)): p.read_bytes() for p in files}}
    if SUFFIX[name] == ".st":
        ck = checkpoint.load(out)  # a partial file would fail its checks here
        if name == "finetune":
            return {k: v.clone() for k, v in ck.state.items()}
        return out.read_bytes()
    text = out.read_text()
    if name == "evaluate":
        json.loads(text)
    else:
        assert text.endswith("\n") and text.startswith("image_id,")
    return text


def _same(a, b) -> bool:
    if isinstance(a, dict) and a and isinstance(next(iter(a.values())), torch.Tensor):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("name", list(SUFFIX))
def test_a_kill_at_any_moment_leaves_nothing_or_a_whole_output(inputs, tmp_path, name):
    args = _commands(inputs)[name]
    ref = tmp_path / f"ref{SUFFIX[name]}"
    t0 = time.monotonic()
    _run(_argv(name, args, ref))
    took = time.monotonic() - t0
    expected = _result(name, ref)
    assert expected is not None
    rng = random.Random(f"{name}-kills")
    for k in range(KILLS_PER_COMMAND):
        out = tmp_path / f"killed{k}{SUFFIX[name]}"
        proc = subprocess.Popen([*PK, *_argv(name, args, out)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(0.05, 1.0) * took)
        _kill(proc)
        got = _result(name, out)  # nothing, or complete and valid
        if got is None:  # run it again, as make would; finetune resumes its saved state
            resume = ["--resume"] if name == "finetune" and \
                Path(f"{out}.state").exists() else []
            _run([*_argv(name, args, out), *resume])
            got = _result(name, out)
        assert _same(got, expected), (name, k)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have finished
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_a_full_disk_leaves_nothing_and_says_so(inputs, tmp_path):
    """A file-size limit (RLIMIT_FSIZE, what `ulimit -f` sets) below the checkpoint's size
    stands in for a full disk: one line naming the file, exit 1, no file, no temporary."""
    out = tmp_path / "big.st"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = subprocess.run([*PK, *_commands(inputs)["init"], str(out)], env=ENV,
                            capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert result.returncode == 1, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"cannot write {out}" in lines[0], lines
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_two_writers_on_one_path_leave_one_whole_file(inputs, tmp_path):
    """Two processes write different checkpoints to the same path at once: the file is
    exactly one of them, never a mix."""
    init = _commands(inputs)["init"]
    refs = []
    for seed in ("1", "2"):
        ref = tmp_path / f"ref{seed}.st"
        _run([*init[:-2], seed, "-o", str(ref)])
        refs.append(ref.read_bytes())
    assert refs[0] != refs[1]
    shared = tmp_path / "shared.st"
    for _ in range(3):
        procs = [subprocess.Popen([*PK, *init[:-2], seed, "-o", str(shared)], env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for seed in ("1", "2")]
        for p in procs:
            assert p.wait(timeout=300) == 0, p.stderr.read()
        assert shared.read_bytes() in refs
        checkpoint.load(shared)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
