"""detect: boxes in original pixels, folders of images, empty results, thresholds, threads."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from prunekit import checkpoint
from prunekit.cli import app
from tests.conftest import tiny_checkpoint


def _model_that_finds(tmp_path):
    """A tiny model whose head biases make it 'see' an object in every cell."""
    ck = tiny_checkpoint(classes=2)
    for name in ck.state:
        if name.endswith("conv.bias"):
            ck.state[name] = torch.full_like(ck.state[name], 6.0)
    path = tmp_path / "sees.st"
    checkpoint.save(ck, path)
    return path


def test_detect_on_a_folder_maps_boxes_to_original_pixels(tmp_path, runner):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.png": (128, 64), "b.jpg": (40, 90)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    result = runner.invoke(app, ["detect", str(_model_that_finds(tmp_path)), "--images",
                                 str(folder), "--conf", "0.1", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    dets = pd.read_csv(io.StringIO(result.stdout))
    assert list(dets.columns) == ["image_id", "file_name", "category_id", "category", "score",
                                  "x", "y", "w", "h"]
    assert set(dets.file_name) == {"a.png", "b.jpg"}
    assert set(dets.category) <= {"class0", "class1"} and set(dets.category_id) <= {1, 2}
    for name, (w, h) in {"a.png": (128, 64), "b.jpg": (40, 90)}.items():
        d = dets[dets.file_name == name]
        assert len(d) > 0
        assert (d.x >= 0).all() and (d.y >= 0).all()
        assert (d.x + d.w <= w + 1e-3).all() and (d.y + d.h <= h + 1e-3).all()


def test_a_model_that_finds_nothing_writes_a_header(tmp_path, runner, synth_data):
    ck = tiny_checkpoint(classes=6)
    from prunekit.data.coco import read_categories

    ck.classes = [c["name"] for c in read_categories(synth_data / "val.json")]
    for name in ck.state:
        if name.endswith("conv.bias"):
            ck.state[name] = torch.full_like(ck.state[name], -20.0)
    path = tmp_path / "blind.st"
    checkpoint.save(ck, path)
    out = tmp_path / "dets.csv"
    result = runner.invoke(app, ["detect", str(path), "--data", str(synth_data / "val.json"),
                                 "--device", "cpu", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.read_text() == "image_id,file_name,category_id,category,score,x,y,w,h\n"
    scored = runner.invoke(app, ["evaluate", str(out), "--gt", str(synth_data / "val.json")])
    assert scored.exit_code == 0, scored.stderr
    import json

    metrics = json.loads(scored.stdout)
    assert metrics["map"] == 0 and metrics["map50"] == 0 and metrics["detections"] == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--conf", "1.5"], "--conf"), (["--iou", "0"], "--iou"), (["--max-det", "0"], "--max-det"),
])
def test_bad_thresholds(tmp_path, runner, synth_data, args, message):
    path = tmp_path / "m.st"
    checkpoint.save(tiny_checkpoint(), path)
    result = runner.invoke(app, ["detect", str(path), "--images", str(synth_data / "images"),
                                 *args])
    assert result.exit_code == 1 and message in result.stderr


def test_missing_inputs(tmp_path, runner):
    path = tmp_path / "m.st"
    checkpoint.save(tiny_checkpoint(), path)
    result = runner.invoke(app, ["detect", str(path)])
    assert result.exit_code == 1 and "--data" in result.stderr
    result = runner.invoke(app, ["detect", str(path), "--images", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "not a folder" in result.stderr
