"""YOLOv3 decoding and post-processing: one decoder for loss and inference, thresholds, NMS,
boxes back in original pixels."""

from __future__ import annotations

import math

import torch

from prunekit.models.base import Geometry
from prunekit.models.yolov3.boxes import WH_CLAMP, decode, postprocess, predictions
from prunekit.models.yolov3.loss import yolo_loss
from tests.conftest import yolo


def test_postprocess_thresholds_and_suppresses():
    # Two overlapping boxes of class 0, one of class 1 on top, one below threshold.
    decoded = torch.zeros(1, 4, 7)
    decoded[0, :, :4] = torch.tensor([[50, 50, 20, 20], [52, 50, 20, 20], [50, 50, 20, 20],
                                      [10, 10, 5, 5]], dtype=torch.float32)
    decoded[0, :, 4] = torch.tensor([0.9, 0.8, 0.9, 0.2])
    decoded[0, :, 5:] = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.9], [1.0, 0.0]])
    found = postprocess(decoded, [Geometry(100, 100)], conf=0.5, iou=0.45, max_det=100)[0]
    assert sorted(found.labels.tolist()) == [0, 1]  # class-aware: the class-1 box survives
    assert torch.allclose(found.scores.sort().values, torch.tensor([0.81, 0.9]))
    assert torch.allclose(found.boxes[found.labels == 0], torch.tensor([[40.0, 40, 60, 60]]))


def test_boxes_go_back_to_original_pixels_and_are_clipped():
    decoded = torch.zeros(1, 1, 6)
    decoded[0, 0] = torch.tensor([32.0, 20, 16, 60, 0.9, 1.0])  # reaches above the input
    # a 128×64 image letterboxed to 64: scale 0.5, padded 16 rows at the top
    geometry = Geometry(128, 64, 0.5, 0.0, 16.0)
    found = postprocess(decoded, [geometry], conf=0.5, iou=0.45, max_det=100)[0]
    # input (24, -10, 40, 50) → original (48, -52, 80, 68) → clipped to the 128×64 image
    assert torch.allclose(found.boxes, torch.tensor([[48.0, 0.0, 80.0, 64.0]]))


def test_training_and_inference_decode_large_raw_values_alike():
    model = yolo("yolov3-tiny", 2, 64).eval()
    out = [torch.zeros(1, 3 * 7, 2, 2), torch.zeros(1, 3 * 7, 4, 4)]
    out[0].view(1, 3, 7, 2, 2)[0, 0, 2:4, 0, 0] = 11.0  # beyond the clamp
    boxes = predictions(out, model.anchors(), 64, 2)
    anchor = model.anchors()[0][0]
    assert torch.allclose(boxes[0, 0, 2:4], math.exp(WH_CLAMP) * anchor)
    xy, wh = decode(torch.tensor([0.0, 0.0, 11.0, 11.0]), torch.tensor([0, 0]), anchor, 32)
    assert torch.allclose(wh, boxes[0, 0, 2:4]) and torch.allclose(xy, boxes[0, 0, :2])
    # and the loss sees the same box: its gradient through the clamp is zero
    t = [o.clone().requires_grad_() for o in out]
    from prunekit.models.base import Target

    target = Target(torch.tensor([[0.0, 0.0, 40.0, 40.0]]), torch.tensor([0]), Geometry(64, 64))
    loss, _ = yolo_loss(t, torch.cat((torch.zeros(1, 2), target.input_boxes()), 1),
                        model.anchors(), 64, 2)
    (g,) = torch.autograd.grad(loss, t[0])
    assert float(g.view(1, 3, 7, 2, 2)[0, 0, 2:4, 0, 0].abs().sum()) == 0.0
