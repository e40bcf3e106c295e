"""A checkpoint written by prunekit 0.1.0, before model families, loads, detects and prunes as it
did then (tests/data/legacy/make.sh made the file and the expected results)."""

from __future__ import annotations

import hashlib
import io
import json

import pandas as pd
import pytest

from prunekit import checkpoint
from prunekit.cli import app
from tests.conftest import ROOT

LEGACY = ROOT / "tests" / "data" / "legacy"


def _digest(t) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def _detect(runner, model, synth_data) -> pd.DataFrame:
    r = runner.invoke(app, ["detect", str(model), "--data", str(synth_data / "val.json"),
                            "--conf", "0.001", "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    return pd.read_csv(io.StringIO(r.stdout))


def _same_detections(found: pd.DataFrame, expected_csv: str) -> None:
    expected = pd.read_csv(LEGACY / "expected" / expected_csv)
    assert len(found) == len(expected)
    assert found[["image_id", "category_id", "category"]].equals(
        expected[["image_id", "category_id", "category"]])
    for col in ("score", "x", "y", "w", "h"):
        assert (found[col] - expected[col]).abs().max() < 1e-4, col


def test_the_legacy_file_reads_as_yolov3():
    ck = checkpoint.load(LEGACY / "legacy.st")
    assert ck.family == "yolov3"
    assert ck.masks and ck.scores  # the file exercises masks, sparse storage and scores
    assert [h["command"] for h in ck.history] == ["init", "finetune", "score", "mask", "score"]
    again = checkpoint.from_bytes(checkpoint.to_bytes(ck))
    assert again.family == "yolov3"
    for name, t in ck.state.items():
        assert _digest(again.state[name]) == _digest(t), name


def test_legacy_file_detects_as_before(runner, synth_data):
    _same_detections(_detect(runner, LEGACY / "legacy.st", synth_data), "detect.csv")


@pytest.mark.parametrize(("name", "args", "csv"), [
    ("filter", ["--structured", "--ratio", "0.5", "--compact"], "detect-filter-0.5.csv"),
    ("weight", ["--ratio", "0.6", "--scope", "global"], "detect-weight-0.6.csv"),
])
def test_legacy_file_prunes_as_before(runner, synth_data, tmp_path, name, args, csv):
    out = tmp_path / f"{name}.st"
    r = runner.invoke(app, ["mask", str(LEGACY / "legacy.st"), *args, "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    expected = json.loads((LEGACY / "expected" / "pruned.json").read_text())[name]
    ck = checkpoint.load(out)
    assert ck.arch == expected["arch"]
    assert {k: _digest(v) for k, v in ck.state.items()} == expected["state"]
    assert {k: _digest(v) for k, v in ck.masks.items()} == expected["masks"]
    _same_detections(_detect(runner, out, synth_data), csv)
