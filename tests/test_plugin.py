"""A third model family from outside prunekit: examples/family-plugin (RetinaNet on torchvision's
parts), installed as a package of its own, works through the whole command line, and nothing in
prunekit/ names it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

PLUGIN = ROOT / "examples" / "family-plugin"
BIN = Path(sys.executable).parent


def _installed() -> bool:
    from importlib import metadata

    return any(p.name == "retinanet" for p in metadata.entry_points(group="prunekit.families"))


@pytest.fixture(scope="module")
def plugin():
    """The plugin installed into this environment (`make install` does it; a bare environment
    gets it here, as a user would install it)."""
    if not _installed():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--no-build-isolation", "-e", str(PLUGIN)], check=True, timeout=600)
    return PLUGIN


def test_nothing_in_prunekit_names_the_plugin():
    found = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "prunekit").rglob("*"))
             if p.suffix in (".py", ".toml", ".cfg")
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if "retinanet" in line.lower()]
    assert not found, found
    assert "retinanet" not in (ROOT / "pyproject.toml").read_text().lower()


@pytest.mark.slow
def test_the_plugin_family_through_the_command_line(plugin, synth_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNEKIT_PROGRESS": "0"}
    train, val = str(synth_data / "train.json"), str(synth_data / "val.json")
    cpu = ["--device", "cpu", "--threads", "1"]

    def run(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "prunekit"), *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (argv, done.stderr[-3000:])
        return done

    listed = run("init", "--help").stdout
    assert "retinanet-tiny" in listed and "Options of the retinanet family:" in listed
    run("init", "retinanet-tiny", "--dataset", train, "--img-size", "64", "--fpn-channels", "24",
        "-o", "fresh.st")
    run("score", "fresh.st", "--method", "l1-filter", "-o", "scored.st")
    pruned = run("mask", "scored.st", "--structured", "--ratio", "0.5", "--compact", "-o",
                 "pruned.st")
    assert "filter pruning at 0.5" in pruned.stderr and "compacted" in pruned.stderr
    run("finetune", "pruned.st", "--data", train, "--adv", "fgsm", "--steps", "3",
        "--batch-size", "4", "--workers", "0", *cpu, "-o", "tuned.st")
    run("detect", "tuned.st", "--data", val, "--conf", "0.001", *cpu, "-o", "dets.csv")
    metrics = json.loads(run("evaluate", "dets.csv", "--gt", val).stdout)
    assert 0 <= metrics["map"] <= 1 and metrics["detections"] > 0
    exported = run("export", "tuned.st", "-o", "tuned.onnx")
    assert "onnxruntime = PyTorch within" in exported.stderr
    figures = json.loads(run("bench", "tuned.st", "--runtime", "onnxruntime", "--min-time",
                             "0.1", "--threads", "1").stdout)
    assert figures["runtime"] == "onnxruntime" and figures["latency_ms"] > 0

    from prunekit import checkpoint

    tuned = checkpoint.load(tmp_path / "tuned.st")
    fresh = checkpoint.load(tmp_path / "fresh.st")
    assert tuned.family == "retinanet" and tuned.arch["fpn_channels"] == 24
    assert sum(t.numel() for t in tuned.state.values()) < \
        0.8 * sum(t.numel() for t in fresh.state.values())  # compaction really removed filters
    assert [h["command"] for h in tuned.history] == ["init", "score", "mask", "compact",
                                                      "finetune"]
    # the ONNX file, run by onnxruntime, gives what PyTorch gives
    import onnxruntime

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(tmp_path / "tuned.onnx"),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = tuned.build()(x)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4, rtol=1e-4)
    # its own export format round-trips, with the stem frozen as torchvision fine-tunes
    run("export", "scored.st", "--torchvision", "weights.safetensors")
    run("init", "--torchvision", "weights.safetensors", "-o", "imported.st")
    imported = checkpoint.load(tmp_path / "imported.st")
    assert imported.arch["frozen"] and all(
        torch.equal(imported.state[k], fresh.state[k]) for k in fresh.state)
