"""Shared test helpers: fixture paths, tiny seeded models, CLI runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

# One thread: tests run beside other jobs on two cores, and oversubscribed OpenMP threads spin
# each other to a crawl (a 3 s test took 100 s with another 2-thread job running).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"


def fixture_path(*parts: str) -> Path:
    """A file in ../shared/fixtures, or skip the test when ../shared is absent."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared fixtures live in ../shared beside the repo")
    return path


MAKE_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def make_killed_after(args: list[str], done: Callable[[], dict], count: int,
                      log: Path) -> dict:
    """Run ``make -C ROOT *args``, kill its whole process group once ``done()`` (finished
    results by path) has ``count`` entries, and return what was finished then."""
    with log.open("w") as sink:
        proc = subprocess.Popen(["make", "-C", str(ROOT), *args], stdout=sink,
                                stderr=subprocess.STDOUT, env=MAKE_ENV, start_new_session=True)
    deadline = time.monotonic() + 900
    while len(done()) < count and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    return done()


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory, worker_id):
    """`make all-scenarios SCALE=smoke`, killed once 4 cells are done and run again: (OUT, the
    results finished before the kill, by path, with their modification times). Built once per
    test run, however many pytest-xdist workers ask for it: the first builds it under a lock in
    their shared temporary folder, the others wait for it and read what it recorded."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    with FileLock(str(shared / "smoke-grid.lock")):
        record = shared / "smoke-grid.json"
        if record.exists():
            saved = json.loads(record.read_text())
            return Path(saved["out"]), {Path(p): t for p, t in saved["finished"].items()}
        out, finished = _smoke_grid(shared / "smoke-grid")
        record.write_text(json.dumps({"out": str(out),
                                      "finished": {str(p): t for p, t in finished.items()}}))
        return out, finished


def _smoke_grid(tmp: Path) -> tuple[Path, dict]:
    tmp.mkdir()
    out = tmp / "grid"

    def results() -> dict:
        return {p: p.stat().st_mtime_ns for p in out.glob("*/run*/r*/result.json")}

    log = tmp / "first-run.log"
    finished = make_killed_after(["all-scenarios", "SCALE=smoke", f"OUT={out}"], results, 4,
                                 log)
    assert 4 <= len(finished) < 30, (len(finished), log.read_text()[-3000:])
    done = subprocess.run(["make", "-C", str(ROOT), "all-scenarios", "SCALE=smoke",
                           f"OUT={out}"], capture_output=True, text=True, env=MAKE_ENV,
                          timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, finished


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def yolo(name: str, classes: int | list[str], img_size: int = 416, colour: str = "rgb",
         arch: dict | None = None):
    """A YOLOv3-family module (random weights) from a member's layer list, or from ``arch``."""
    from prunekit.models import registry
    from prunekit.models.base import default_names
    from prunekit.models.yolov3.arch import build_arch

    names = classes if isinstance(classes, list) else default_names(classes)
    family = registry.get("yolov3")
    arch = arch if arch is not None else build_arch(name, len(names))
    return family.build(arch, family.input_spec(size=img_size, colour=colour), names)


def tiny_checkpoint(classes: int = 3, img_size: int = 64, seed: int = 0, grey: bool = False):
    """A seeded yolov3-small at an eighth of its width: fast enough for any unit test."""
    from prunekit.init import init

    return init("yolov3-small", classes=classes, img_size=img_size, options={"width": 0.125},
                seed=seed, grey=grey)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A tiny synthetic dataset: 24 training and 8 validation images of 64 pixels."""
    from prunekit.data.synth import synth

    out = tmp_path_factory.mktemp("synth") / "data"
    synth(out, train=24, val=8, size=64, seed=0)
    return out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow tests first, most first: `make test` runs the files on two workers
    (`pytest -n 2 --dist loadfile`, in collection order), so the longest file should not start
    last while the other worker sits idle."""
    slow: dict[Path, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])
