"""YOLOv3's box decoding and post-processing: one decoder for training, inference and attacks.

Decoding (YOLOv3): centre = (sigmoid(t_xy) + cell) · stride, size = exp(t_wh) · anchor, in
input pixels. ``t_wh`` is clamped at :data:`WH_CLAMP` first, in the loss and at inference
alike: exp(8) ≈ 2981 anchor widths is wider than any image, and the clamp keeps exp and its
gradient finite on wild raw values.

A box's score is objectness × class probability. Every class whose score clears the threshold
yields a candidate (multi-label), which is what mAP at a low threshold (0.001) expects; at the
paper's threshold (0.5) it rarely matters. NMS is :func:`torchvision.ops.batched_nms`, per
class; boxes then go back to original pixels through each image's geometry and are clipped to
the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_convert

from prunekit.models.base import Detections, Geometry, Target

WH_CLAMP = 8.0
MAX_CANDIDATES = 30_000


def decode(t: Tensor, cells: Tensor, anchors: Tensor, stride: float) -> tuple[Tensor, Tensor]:
    """Box centres and sizes in input pixels from raw box outputs.

    Args:
        t: raw (t_x, t_y, t_w, t_h) in the last dimension.
        cells: the (column, row) of each prediction's grid cell, broadcastable to ``t[..., :2]``.
        anchors: each prediction's anchor (width, height) in input pixels, broadcastable too.
        stride: input pixels per grid cell.
    """
    xy = (t[..., :2].sigmoid() + cells) * stride
    wh = t[..., 2:4].clamp(max=WH_CLAMP).exp() * anchors
    return xy, wh


def grid_cells(h: int, w: int, device: torch.device) -> Tensor:
    """1×1×h×w×2 (column, row) of every cell of an h×w grid."""
    gy, gx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                            indexing="ij")
    return torch.stack((gx, gy), -1).view(1, 1, h, w, 2)


def per_anchor(out: Tensor, anchors: int, num_classes: int) -> Tensor:
    """A head's N×(A·(5+C))×h×w output as N×A×h×w×(5+C) floats."""
    n, _, h, w = out.shape
    return out.view(n, anchors, 5 + num_classes, h, w).permute(0, 1, 3, 4, 2).float()


def predictions(outputs: Sequence[Tensor], anchors: Sequence[Tensor], img_size: int,
                num_classes: int) -> Tensor:
    """Every prediction of every head: N×P×(5+C) with centre x, y, width, height in input
    pixels, then objectness and class probabilities (sigmoids)."""
    decoded = []
    for out, anc in zip(outputs, anchors, strict=True):
        n, _, h, w = out.shape
        a = anc.shape[0]
        p = per_anchor(out, a, num_classes)
        xy, wh = decode(p, grid_cells(h, w, out.device), anc.to(out.device).view(1, a, 1, 1, 2),
                        img_size / h)
        decoded.append(torch.cat((xy, wh, p[..., 4:].sigmoid()), -1)
                       .reshape(n, -1, 5 + num_classes))
    return torch.cat(decoded, 1)


class Decoded(nn.Module):
    """A network followed by the decoding: images → ``boxes`` (N×P×4 xyxy in input pixels) and
    ``scores`` (N×P×C, objectness × class probability), every prediction, before thresholds
    and NMS: the decoded outputs ONNX export writes."""

    def __init__(self, net: nn.Module, anchors: Sequence[Tensor], img_size: int,
                 num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.anchors = [a.clone() for a in anchors]
        self.img_size, self.num_classes = img_size, num_classes

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        pred = predictions(self.net(images), self.anchors, self.img_size, self.num_classes)
        obj = pred[..., 4:5]
        scores = obj * pred[..., 5:] if pred.shape[-1] > 5 else obj
        return box_convert(pred[..., :4], "cxcywh", "xyxy"), scores


def postprocess(decoded: Tensor, geometries: Sequence[Geometry], *, conf: float, iou: float,
                max_det: int) -> list[Detections]:
    """Thresholds, class-aware NMS, and boxes in original pixels, per image.

    Args:
        decoded: N×P×(5+C) from :func:`predictions`.
        geometries: each image's geometry.
        conf: minimum score (objectness × class probability).
        iou: NMS IoU threshold.
        max_det: most detections kept per image.
    """
    results = []
    for pred, geometry in zip(decoded, geometries, strict=True):
        obj = pred[:, 4:5]
        scores_all = obj * pred[:, 5:] if pred.shape[1] > 5 else obj
        keep = scores_all > conf
        idx, cls = keep.nonzero(as_tuple=True)
        scores = scores_all[idx, cls]
        if len(scores) > MAX_CANDIDATES:
            top = scores.topk(MAX_CANDIDATES).indices
            idx, cls, scores = idx[top], cls[top], scores[top]
        boxes = box_convert(pred[idx, :4], "cxcywh", "xyxy")
        kept = batched_nms(boxes.float(), scores.float(), cls, iou)[:max_det]
        original = geometry.clip(geometry.to_original(boxes[kept].cpu().float()))
        results.append(Detections(original, scores[kept].cpu().float(), cls[kept].cpu()))
    return results


def ideal_outputs(targets: Sequence[Target], anchors: Sequence[Tensor],
                  grids: Sequence[tuple[int, int]], img_size: int, num_classes: int,
                  confidence: float = 20.0) -> tuple[Tensor, ...]:
    """Raw head outputs that decode to exactly the targets' boxes (each at the best-fitting
    anchor of any head, in the cell of its centre), with objectness and the true class at
    sigmoid(+``confidence``) and everything else at sigmoid(−``confidence``). Two targets on
    the same anchor and cell: the later one wins."""
    n = len(targets)
    outs = [torch.full((n, a.shape[0], 5 + num_classes, h, w), -confidence)
            for a, (h, w) in zip(anchors, grids, strict=True)]
    flat = torch.cat(list(anchors))
    heads = torch.cat([torch.full((a.shape[0],), k) for k, a in enumerate(anchors)])
    first = [sum(a.shape[0] for a in anchors[:k]) for k in range(len(anchors))]
    for i, target in enumerate(targets):
        for box, label in zip(target.input_boxes(), target.labels.tolist(), strict=True):
            wh = box[2:] - box[:2]
            centre = (box[:2] + box[2:]) / 2
            ratio = wh / flat
            best = int(torch.maximum(ratio, 1 / ratio).amax(1).argmin())
            k = int(heads[best])
            stride = img_size / grids[k][0]
            cell = (centre / stride).floor().clamp(min=0)
            frac = (centre / stride - cell).clamp(1e-6, 1 - 1e-6)
            col, row = int(cell[0]), int(cell[1])
            slot = outs[k][i, best - first[k], :, row, col]
            slot[:2] = torch.log(frac / (1 - frac))
            slot[2:4] = torch.log(wh / flat[best])
            slot[4] = confidence
            slot[5 + label] = confidence
    return tuple(o.flatten(1, 2) for o in outs)
