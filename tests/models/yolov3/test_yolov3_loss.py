"""The YOLOv3 loss: assignment, perfect predictions, gradients, empty targets."""

from __future__ import annotations

import math

import torch

from prunekit.models.yolov3.loss import assign, yolo_loss
from tests.conftest import yolo


def _model():
    return yolo("yolov3-tiny", 2, 64).eval()


def test_assignment_uses_the_centre_cell_and_fitting_anchors():
    anchors = [torch.tensor([[10.0, 10], [60, 60]]), torch.tensor([[100.0, 100]])]
    targets = torch.tensor([[0, 1, 10, 20, 22, 32]])  # a 12×12 box centred at (16, 26)
    a = assign(targets, anchors, [(8, 8), (2, 2)], 64)
    assert a[0].anchor.tolist() == [0] and a[0].row.tolist() == [3] and a[0].col.tolist() == [2]
    assert a[1].anchor.numel() == 0  # 100 px is more than 4× the box


def test_loss_is_finite_differentiable_and_handles_no_targets():
    model = _model()
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    out = model(x)
    anchors = [h.anchors for h in model.heads()]
    targets = torch.tensor([[0, 1, 10, 10, 30, 40], [1, 0, 5, 5, 60, 60]], dtype=torch.float32)
    total, parts = yolo_loss(out, targets, anchors, 64, 2)
    assert torch.isfinite(total) and set(parts) == {"box", "obj", "cls"}
    (g,) = torch.autograd.grad(total, x)
    assert g.abs().sum() > 0
    empty, parts = yolo_loss(model(x), torch.zeros(0, 6), anchors, 64, 2)
    assert torch.isfinite(empty) and float(parts["box"]) == 0 and float(parts["cls"]) == 0


def test_confident_correct_predictions_cost_little():
    model = _model()
    anchors = [h.anchors for h in model.heads()]
    targets = torch.tensor([[0, 1, 24, 24, 56, 56]], dtype=torch.float32)  # centre (40, 40)
    out = [torch.full((1, 3 * 7, 2, 2), -12.0), torch.full((1, 3 * 7, 4, 4), -12.0)]
    asg = assign(targets, anchors, [(2, 2), (4, 4)], 64)
    for o, a, anc in zip(out, asg, anchors, strict=True):
        p = o.view(1, 3, 7, *o.shape[-2:])
        for k in range(len(a.target)):
            ai, gj, gi = int(a.anchor[k]), int(a.row[k]), int(a.col[k])
            stride = 64 / o.shape[-1]
            cx = 40 / stride - gi
            p[0, ai, 0, gj, gi] = math.log(cx / (1 - cx)) if 0 < cx < 1 else 0.0
            p[0, ai, 1, gj, gi] = p[0, ai, 0, gj, gi]
            p[0, ai, 2:4, gj, gi] = torch.log(torch.tensor([32.0, 32.0]) / anc[ai])
            p[0, ai, 4, gj, gi] = 12.0
            p[0, ai, 5, gj, gi], p[0, ai, 6, gj, gi] = -12.0, 12.0
    good, parts = yolo_loss(out, targets, anchors, 64, 2)
    wrong = [o.clone() for o in out]
    for o in wrong:
        o.view(1, 3, 7, *o.shape[-2:])[:, :, 5:] *= -1
    bad, _ = yolo_loss(wrong, targets, anchors, 64, 2)
    assert float(parts["box"]) < 1e-3 and float(good) < 0.05 and float(bad) > 5 * float(good)
