"""ONNX export (issue 17): the written file, run by onnxruntime, gives PyTorch's outputs for
both families, dense, pruned and compacted, at a batch other than the one it was captured
with; what it holds is what the checkpoint holds; a mismatch writes nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from prunekit import checkpoint
from prunekit import onnx as pk_onnx
from prunekit.bench import bench, resolve_runtime
from prunekit.errors import PrunekitError
from prunekit.export import export_onnx
from prunekit.init import init
from prunekit.mask import PruneConfig, mask
from prunekit.models.yolov3 import boxes as yolo_boxes
from prunekit.score import score

TOL = 1e-4


def _close(got: np.ndarray, expected: torch.Tensor) -> float:
    """The largest difference scaled as the export's check scales it; asserts it is ≤ 1e-4."""
    b = expected.detach().numpy()
    assert got.shape == b.shape
    scaled = np.abs(got.astype(np.float64) - b) / np.maximum(1.0, np.abs(b))
    assert scaled.max() <= TOL, scaled.max()
    return float(scaled.max())


def _run(path, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def _conv_shapes(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    return sorted(tuple(t.dims) for t in model.graph.initializer if len(t.dims) == 4)


# ----------------------------------------------------------------------------------- YOLOv3


@pytest.fixture(scope="module")
def yolo_models() -> dict[str, checkpoint.Checkpoint]:
    dense = init("yolov3-small", classes=3, img_size=96, seed=0)
    scored = score(dense, "magnitude")
    filters = score(dense, "l1-filter")
    grey = init("yolov3-small", classes=3, img_size=96, seed=1, grey=True)
    return {"dense": dense, "weight-90": mask(scored, PruneConfig(0.9)),
            "filter-50-compact": mask(filters, PruneConfig(0.5, granularity="filter",
                                                           compact=True)),
            "grey": grey}


@pytest.mark.parametrize("variant", ["dense", "weight-90", "filter-50-compact", "grey"])
def test_yolov3_onnx_equals_pytorch_at_another_batch(yolo_models, variant, tmp_path):
    ck = yolo_models[variant]
    path = tmp_path / "y.onnx"
    done = export_onnx(ck, path)  # dynamic batch, captured at 2, checked at 3
    assert done.batch == "dynamic" and done.verified_batch == 3
    model = ck.build()
    x = torch.rand(5, *model.input_shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x)
    got = _run(path, {"images": x})
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected, strict=True):
        _close(a, b)
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ck.classes
    assert json.loads(meta["input_size"]) == [96, 96]
    assert meta["colour"] == ("grey" if variant == "grey" else "rgb")
    assert meta["batch"] == "dynamic"
    assert [o.name for o in proto.graph.output] == ["stride32", "stride16", "stride8"]
    assert set(json.loads(meta["anchors"])) == {"stride32", "stride16", "stride8"}
    if variant == "weight-90":
        # Folding BatchNorm scales each filter, so every masked weight is still an exact zero.
        zeros = sum(int((onnx.numpy_helper.to_array(t) == 0).sum())
                    for t in proto.graph.initializer if len(t.dims) == 4)
        assert zeros >= sum(int((~m).sum()) for m in ck.masks.values())
    if variant == "filter-50-compact":
        # The file holds the compacted widths: the same convolution shapes as the model.
        shapes = sorted(tuple(m.weight.shape) for m in model.modules()
                        if isinstance(m, torch.nn.Conv2d))
        assert _conv_shapes(proto) == shapes
        assert shapes != sorted(tuple(m.weight.shape) for m in yolo_models["dense"].build()
                                .modules() if isinstance(m, torch.nn.Conv2d))


def test_yolov3_decoded_boxes_and_scores(yolo_models, tmp_path):
    ck = yolo_models["filter-50-compact"]
    path = tmp_path / "yd.onnx"
    export_onnx(ck, path, batch=1, decoded=True)
    model = ck.build()
    x = torch.rand(1, *model.input_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred = yolo_boxes.predictions(model(x), model.anchors(), model.img_size,
                                      model.num_classes)
    got_boxes, got_scores = _run(path, {"images": x})
    cx, cy, w, h = pred[..., 0], pred[..., 1], pred[..., 2], pred[..., 3]
    _close(got_boxes, torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1))
    _close(got_scores, pred[..., 4:5] * pred[..., 5:])
    # A fixed batch is fixed: the file refuses another.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 96, 96]
    with pytest.raises(Exception, match="dimensions"):
        session.run(None, {"images": torch.rand(2, 3, 96, 96).numpy()})


# ---------------------------------------------------------------------------- Deformable DETR


@pytest.fixture(scope="module")
def detr_models() -> dict[str, checkpoint.Checkpoint]:
    dense = init("deformable-detr-small", classes=3, seed=0)
    compact = mask(score(dense, "l1-filter"), PruneConfig(0.5, granularity="filter", compact=True))
    return {"dense": dense, "filter-50-compact": compact}


@pytest.mark.parametrize("variant", ["dense", "filter-50-compact"])
def test_deformable_detr_onnx_equals_pytorch_at_another_batch(detr_models, variant, tmp_path):
    ck = detr_models[variant]
    path = tmp_path / "d.onnx"
    export_onnx(ck, path)
    model = ck.build()
    images, pixel_mask = model.graph_inputs(4, torch.Generator().manual_seed(5))
    assert (pixel_mask == 0).any()  # some padding, so the mask matters
    with torch.no_grad():
        logits, boxes = model.forward_masked(images, pixel_mask)
    got = _run(path, {"images": images, "pixel_mask": pixel_mask})
    _close(got[0], logits[:, -1])
    _close(got[1], boxes[:, -1])
    # The mask is a live input, not a constant: without padding the outputs change.
    unmasked = _run(path, {"images": images, "pixel_mask": torch.ones_like(pixel_mask)})
    assert np.abs(unmasked[0] - got[0]).max() > 1e-3
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["input_size"]) == list(model.input_shape[1:])
    assert meta["prunekit.family"] == "deformable-detr"
    assert [i.name for i in proto.graph.input] == ["images", "pixel_mask"]


def test_deformable_detr_decoded(detr_models, tmp_path):
    ck = detr_models["dense"]
    path = tmp_path / "dd.onnx"
    export_onnx(ck, path, batch=2, decoded=True)
    model = ck.build()
    images, pixel_mask = model.graph_inputs(2, torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, boxes = model.forward_masked(images, pixel_mask)
    h, w = model.input_shape[1:]
    cxcywh = boxes[:, -1] * torch.tensor([w, h, w, h])
    xyxy = torch.cat((cxcywh[..., :2] - cxcywh[..., 2:] / 2,
                      cxcywh[..., :2] + cxcywh[..., 2:] / 2), -1)
    got_boxes, got_scores = _run(path, {"images": images, "pixel_mask": pixel_mask})
    _close(got_boxes, xyxy)
    _close(got_scores, logits[:, -1].sigmoid())


# ------------------------------------------------------------------ verification and refusals


def test_a_mismatch_writes_nothing_and_no_verify_writes(yolo_models, tmp_path, monkeypatch):
    # At tolerance 0 the float rounding of the folded BatchNorm (about 1e-6) is a mismatch.
    monkeypatch.setattr(pk_onnx, "TOLERANCE", 0.0)
    path = tmp_path / "y.onnx"
    with pytest.raises(PrunekitError, match=r"differs from PyTorch by .* nothing was written"):
        export_onnx(yolo_models["dense"], path)
    assert list(tmp_path.iterdir()) == []
    done = export_onnx(yolo_models["dense"], path, verify=False)
    assert path.exists() and done.verified_batch is None and done.max_error == {}


def test_every_supported_opset_runs(yolo_models, tmp_path):
    for opset in (pk_onnx.MIN_OPSET, pk_onnx.max_opset()):
        done = export_onnx(yolo_models["grey"], tmp_path / f"o{opset}.onnx", opset=opset)
        assert onnx.load(str(tmp_path / f"o{opset}.onnx")).opset_import[0].version == opset
        assert max(done.max_error.values()) <= TOL
    with pytest.raises(PrunekitError, match="--opset 17 is not supported"):
        export_onnx(yolo_models["grey"], tmp_path / "old.onnx", opset=17)
    assert not (tmp_path / "old.onnx").exists()


def test_cli_export_reports_the_check(yolo_models, tmp_path, runner):
    from prunekit.cli import app

    src = tmp_path / "m.st"
    checkpoint.save(yolo_models["weight-90"], src)
    result = runner.invoke(app, ["export", str(src), "-o", str(tmp_path / "m.onnx"),
                                 "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert "opset 18, batch 2; onnxruntime = PyTorch within" in result.output
    assert ort.InferenceSession(str(tmp_path / "m.onnx")).get_inputs()[0].shape[0] == 2


# ------------------------------------------------------------------------------------ bench


def test_bench_times_the_onnx_file_with_the_same_fields(yolo_models):
    ck = yolo_models["filter-50-compact"]
    ours = bench(ck, runtime="onnxruntime", threads=1, min_run_time=0.2)
    torch_ = bench(ck, runtime="eager", threads=1, min_run_time=0.2)
    assert ours["runtime"] == "onnxruntime" and ours["latency_ms"] > 0
    assert set(ours) == set(torch_)
    assert {k: v for k, v in ours.items() if "latency" not in k and k not in
            ("throughput", "runtime")} == {k: v for k, v in torch_.items() if "latency" not in k
                                           and k not in ("throughput", "runtime")}
    assert resolve_runtime("auto", torch.device("cpu")) != "onnxruntime"
    with pytest.raises(PrunekitError, match="onnxruntime runs on the CPU here"):
        resolve_runtime("onnxruntime", torch.device("cuda"))
