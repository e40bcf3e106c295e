"""The exported file as a model (issue 27): `detect` (and so `evaluate`) and `bench` run an
.onnx file `export` wrote with the checkpoint's own input transform and post-processing, and
give the checkpoint's detections; a file is never attacked, only given images attacked on its
source checkpoint."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from prunekit import checkpoint
from prunekit.bench import bench
from prunekit.cli import app
from prunekit.detect import detect_dataset, to_frame
from prunekit.errors import PrunekitError
from prunekit.evaluate import evaluate
from prunekit.export import export_onnx
from prunekit.init import init
from prunekit.mask import PruneConfig, mask
from prunekit.onnxfile import OnnxFile, load_model, looks_like_onnx
from prunekit.score import score


def lively(ck: checkpoint.Checkpoint, size: int, seed: int = 0) -> checkpoint.Checkpoint:
    """``ck`` with its BatchNorm statistics measured on random images: a fresh model's stored
    statistics (mean 0, variance 1) do not normalise, so its signal fades layer by layer and
    every detection gets the same score to 1e-8, and ties make any comparison of detections
    meaningless. With them its scores spread out."""
    model = ck.build().train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, size, size, generator=g))
    return ck.with_model(model.eval())


@pytest.fixture(scope="module")
def models(synth_data) -> dict[str, checkpoint.Checkpoint]:
    names = [c["name"] for c in json.loads((synth_data / "val.json").read_text())["categories"]]
    yolo = lively(init("yolov3-small", names=names, img_size=64, options={"width": 0.25},
                        seed=0), 64)
    detr = init("deformable-detr-small", names=names, img_size=64, seed=0)
    compact = mask(score(yolo, "l1-filter"), PruneConfig(0.5, granularity="filter",
                                                          compact=True))
    return {"yolov3": yolo, "yolov3-compact": compact,
            "detr": detr}


def _frame(model, data, **kw) -> pd.DataFrame:
    _, ids, found = detect_dataset(model, data=data, conf=0.001, device="cpu", batch_size=4,
                                   **kw)
    return to_frame(found, ids)


@pytest.mark.parametrize("variant", ["yolov3", "yolov3-compact", "detr"])
def test_detect_with_the_file_equals_detect_with_the_checkpoint(models, variant, synth_data,
                                                                 tmp_path):
    ck = models[variant]
    export_onnx(ck, tmp_path / "m.onnx")
    file = load_model(tmp_path / "m.onnx")
    assert isinstance(file, OnnxFile) and file.classes == ck.classes
    val = synth_data / "val.json"
    ours, theirs = _frame(file, val), _frame(ck, val)
    assert theirs.score.nunique() > 0.9 * len(theirs)  # no ties: the comparison means something
    assert len(ours) == len(theirs) > 100
    # Row by row in one order: detections come by score, and two of one image whose scores
    # differ by float rounding alone may come either way round (the untrained DETR here has
    # pairs of classes 3e-8 apart), so each image's rows are compared class by class.
    ours, theirs = (f.sort_values(["image_id", "category_id", "score"], ascending=[True, True,
                                                                                  False],
                                  kind="stable").reset_index(drop=True) for f in (ours, theirs))
    assert (ours[["image_id", "category_id"]].values ==
            theirs[["image_id", "category_id"]].values).all()
    assert np.abs(ours.score.values - theirs.score.values).max() < 1e-5
    assert np.abs(ours[["x", "y", "w", "h"]].values - theirs[["x", "y", "w", "h"]].values).max() \
        < 1e-3
    a, b = evaluate(ours, val), evaluate(theirs, val)
    assert abs(a["map"] - b["map"]) < 1e-3 and abs(a["map50"] - b["map50"]) < 1e-3


def test_a_fixed_batch_file_detects_any_number_of_images(models, synth_data, tmp_path):
    ck = models["yolov3"]
    export_onnx(ck, tmp_path / "b3.onnx", batch=3)  # 8 images: 3 + 3 + 2 padded
    file = load_model(tmp_path / "b3.onnx")
    assert file.batch == 3
    val = synth_data / "val.json"
    ours, theirs = _frame(file, val), _frame(ck, val)
    assert len(ours) == len(theirs)
    assert np.abs(ours.score.values - theirs.score.values).max() < 1e-5


def test_cli_detect_and_evaluate_a_file_through_a_pipe(models, synth_data, tmp_path, runner):
    src, onnx_path = tmp_path / "m.st", tmp_path / "m.onnx"
    checkpoint.save(models["detr"], src)
    export_onnx(models["detr"], onnx_path)
    val = str(synth_data / "val.json")
    outs = {}
    for path in (src, onnx_path):
        result = runner.invoke(app, ["detect", str(path), "--data", val, "--conf", "0.001",
                                     "--device", "cpu"])
        assert result.exit_code == 0, result.stderr
        outs[path.suffix] = result.stdout
    assert "a float ONNX file of a deformable-detr model in onnxruntime" in result.stderr
    a, b = (pd.read_csv(io.StringIO(outs[s])) for s in (".st", ".onnx"))
    assert len(a) == len(b) and np.abs(a.score.values - b.score.values).max() < 1e-5
    # stdin works for a file as for a checkpoint
    piped = runner.invoke(app, ["detect", "-", "--data", val, "--conf", "0.001",
                                "--device", "cpu"], input=onnx_path.read_bytes())
    assert piped.exit_code == 0, piped.stderr
    assert piped.stdout == outs[".onnx"]
    metrics = runner.invoke(app, ["evaluate", "--gt", val, "--no-per-class"],
                            input=outs[".onnx"])
    assert metrics.exit_code == 0 and "map50" in json.loads(metrics.stdout)


def test_a_file_is_given_attacked_images_not_attacked(models, synth_data, tmp_path, runner):
    src, onnx_path = tmp_path / "m.st", tmp_path / "m.onnx"
    checkpoint.save(models["yolov3"], src)
    export_onnx(models["yolov3"], onnx_path)
    val = str(synth_data / "val.json")
    refused = runner.invoke(app, ["detect", str(onnx_path), "--data", val, "--attack", "pgd"])
    assert refused.exit_code == 1
    assert "gradients do not run through an ONNX file" in refused.stderr
    assert "prunekit attack model.st" in refused.stderr
    made = runner.invoke(app, ["attack", str(src), "--data", val, "--steps", "2", "-o",
                               str(tmp_path / "adv"), "--device", "cpu"])
    assert made.exit_code == 0, made.stderr
    adv = tmp_path / "adv" / "val.json"
    assert json.loads(adv.read_text())["info"]["prunekit_attack"]["model"] == str(src)
    result = runner.invoke(app, ["detect", str(onnx_path), "--data", str(adv), "--conf",
                                 "0.001", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert f"transferred attack: these images were attacked by pgd (eps 0.05, 2 steps) on " \
           f"{src}, not on {onnx_path}" in " ".join(result.stderr.split())
    # the file on attacked images = the checkpoint on the same images
    ours, theirs = _frame(load_model(onnx_path), adv), _frame(models["yolov3"], adv)
    assert len(ours) == len(theirs)
    assert np.abs(ours.score.values - theirs.score.values).max() < 1e-5


def test_bench_of_a_file_has_the_checkpoints_fields(models, tmp_path):
    ck = models["yolov3-compact"]
    export_onnx(ck, tmp_path / "m.onnx")
    file = load_model(tmp_path / "m.onnx")
    ours = bench(file, threads=1, min_run_time=0.2)
    theirs = bench(ck, threads=1, min_run_time=0.2, runtime="onnxruntime")
    assert set(ours) == set(theirs)
    assert ours["runtime"] == "onnxruntime" and ours["latency_ms"] > 0
    assert ours["bytes_stored"] == (tmp_path / "m.onnx").stat().st_size
    assert ours["precision"] == theirs["precision"] == "float32"
    for key in ("params_total", "params_nonzero", "macs", "flops", "img_size", "arch"):
        assert ours[key] == theirs[key], key
    assert ours["macs_nonzero"] is None  # the file's zero weights are not counted
    with pytest.raises(PrunekitError, match="runs PyTorch checkpoints; use --runtime "
                                            "onnxruntime"):
        bench(file, runtime="onednn-graph", latency=False)
    export_onnx(ck, tmp_path / "b2.onnx", batch=2, decoded=True)
    decoded = load_model(tmp_path / "b2.onnx")
    assert bench(decoded, batch=2, threads=1, min_run_time=0.1)["latency_ms"] > 0
    with pytest.raises(PrunekitError, match="fixed batch of 2; bench it with --batch 2"):
        bench(decoded, batch=1, threads=1, min_run_time=0.1)
    with pytest.raises(PrunekitError, match="was exported with --decode"):
        decoded.build()


def test_cli_bench_of_a_checkpoint_and_its_file_make_one_table(models, tmp_path, runner):
    src, onnx_path = tmp_path / "m.st", tmp_path / "m.onnx"
    checkpoint.save(models["yolov3-compact"], src)
    export_onnx(models["yolov3-compact"], onnx_path)
    rows = []
    for args in ([str(src), "--runtime", "onnxruntime"], [str(onnx_path)]):
        result = runner.invoke(app, ["bench", *args, "--threads", "1", "--min-time", "0.2",
                                     "--format", "csv"])
        assert result.exit_code == 0, result.stderr
        assert len(result.stdout.splitlines()) == 2  # a header and one row
        rows.append(result.stdout)
    assert rows[0].splitlines()[0] == rows[1].splitlines()[0]  # the same columns
    table = pd.read_csv(io.StringIO(rows[0] + rows[1].split("\n", 1)[1]))
    assert len(table) == 2
    assert (table.runtime == "onnxruntime").all() and (table.latency_ms > 0).all()
    for key in ("params_total", "macs", "flops", "img_size", "precision"):
        assert table[key].nunique() == 1, key
    assert table.bytes_stored.iloc[1] == onnx_path.stat().st_size


def test_what_is_an_onnx_file(models, tmp_path):
    export_onnx(models["yolov3"], tmp_path / "m.onnx")
    data = (tmp_path / "m.onnx").read_bytes()
    assert looks_like_onnx(data) and looks_like_onnx(data, "x.onnx")
    assert not looks_like_onnx(checkpoint.to_bytes(models["yolov3"]), "x.onnx")
    assert isinstance(load_model(data), OnnxFile)
    assert isinstance(load_model(checkpoint.to_bytes(models["yolov3"])), checkpoint.Checkpoint)
