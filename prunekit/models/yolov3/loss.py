"""The YOLOv3 detection loss, shared by training, attacks and score optimisation.

Choices (documented because they change what "the loss" means):

* **Assignment.** A target is assigned, at every scale, to each of that head's anchors whose
  width and height ratios to the box both lie within ``anchor_t`` (4×), in the grid cell that
  holds the box centre; when no anchor of any head qualifies, the best-fitting anchor overall
  takes it. Several anchors per target give more positives than YOLOv3's single best anchor and
  train faster; this is the rule later YOLO versions settled on.
* **Box loss.** 1 − CIoU (:func:`torchvision.ops.complete_box_iou_loss`) between the decoded box
  (:func:`prunekit.models.yolov3.boxes.decode`, the decoder inference uses) and the target,
  averaged over positives.
* **Objectness.** Binary cross-entropy over every prediction. A positive's target is the IoU of
  its predicted box with its target (detached, at least 0), so confidence ranks by localisation
  quality, which mAP@[.5:.95] rewards. A negative whose predicted box overlaps any target of its
  image by more than ``ignore_iou`` is ignored, as in YOLOv3: it is a reasonable box, only not
  the assigned one. Heads are balanced 4 : 1 : 0.4 from stride 8 to stride 32.
* **Classes.** Binary cross-entropy per class (one-hot) over positives, as YOLOv3.
* **Scale.** The three parts are weighted (``box``, ``obj``, ``cls``) and summed; the total is
  multiplied by the batch size, so the gradient per image does not shrink with the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, box_iou, complete_box_iou_loss

from prunekit.models.base import Target
from prunekit.models.yolov3.boxes import decode, grid_cells, per_anchor


@dataclass(frozen=True)
class LossConfig:
    """Weights and thresholds of the loss."""

    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    anchor_t: float = 4.0
    ignore_iou: float = 0.7


_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4}
# Pairwise IoU within each image of a batch: N×P×4 and N×G×4 → N×P×G.
_batched_box_iou = torch.vmap(box_iou)


def target_rows(targets: Sequence[Target]) -> Tensor:
    """Neutral targets as M×6 rows of (image index, class, x1, y1, x2, y2) in input pixels."""
    rows = [torch.cat((torch.full((len(t.labels), 1), float(i)), t.labels.float().unsqueeze(1),
                       t.input_boxes().float()), 1) for i, t in enumerate(targets)]
    return torch.cat(rows) if rows else torch.zeros(0, 6)


@dataclass
class Assignment:
    """Targets assigned to one head: image, anchor, row, column, class and target row index."""

    image: Tensor
    anchor: Tensor
    row: Tensor
    col: Tensor
    cls: Tensor
    target: Tensor


def assign(targets: Tensor, anchors: Sequence[Tensor], grids: Sequence[tuple[int, int]],
           img_size: int, anchor_t: float = 4.0) -> list[Assignment]:
    """Which (anchor, cell) of which head predicts which target (see the module docstring).

    Args:
        targets: M×6 rows of (image index, class, x1, y1, x2, y2) in input pixels.
        anchors: each head's anchors, A×2 in input pixels.
        grids: each head's (rows, columns).
        img_size: the model's input size.
        anchor_t: largest width or height ratio between a box and an anchor it may use.
    """
    device = anchors[0].device
    targets = targets.to(device)
    cxy = (targets[:, 2:4] + targets[:, 4:6]) / 2
    wh = targets[:, 4:6] - targets[:, 2:4]
    all_anchors = torch.cat(list(anchors))
    ratio = wh[:, None] / all_anchors[None]
    fit_all = torch.maximum(ratio, 1 / ratio).amax(2)  # M × (all anchors)
    fits_somewhere = (fit_all < anchor_t).any(1)
    best = fit_all.argmin(1)
    result = []
    offset = 0
    for anc, (h, w) in zip(anchors, grids, strict=True):
        a = anc.shape[0]
        ok = fit_all[:, offset:offset + a] < anchor_t
        ok |= (~fits_somewhere[:, None]) & (best[:, None] == torch.arange(
            offset, offset + a, device=device)[None])
        ti, ai = ok.nonzero(as_tuple=True)
        stride = img_size / h
        cell = (cxy[ti] / stride).long().clamp_(min=0)
        result.append(Assignment(targets[ti, 0].long(), ai, cell[:, 1].clamp(max=h - 1),
                                 cell[:, 0].clamp(max=w - 1), targets[ti, 1].long(), ti))
        offset += a
    return result


def _per_image(targets: Tensor, n: int) -> Tensor | None:
    """Each image's target boxes, N×G×4 padded with zero boxes (None without targets)."""
    if not len(targets):
        return None
    t_img = targets[:, 0].long()
    counts = torch.bincount(t_img, minlength=n)
    padded = torch.zeros(n, int(counts.max()), 4, device=targets.device)
    order = torch.argsort(t_img, stable=True)
    starts = torch.cat((torch.zeros(1, dtype=torch.long, device=targets.device),
                        counts.cumsum(0)[:-1]))
    slot = torch.arange(len(targets), device=targets.device) - starts[t_img[order]]
    padded[t_img[order], slot] = targets[order, 2:6]
    return padded


@torch.no_grad()
def _not_ignored(p: Tensor, anchors: Tensor, per_image: Tensor | None, stride: float,
                 ignore_iou: float) -> Tensor:
    """Objectness weights of one head: 0 for a prediction whose box already overlaps a
    target of its image by more than ``ignore_iou`` (YOLOv3's ignore rule), else 1."""
    n, a, h, w = p.shape[:4]
    if per_image is None:
        return torch.ones(p.shape[:4], device=p.device)
    pxy, pwh = decode(p, grid_cells(h, w, p.device), anchors.view(1, a, 1, 1, 2), stride)
    boxes = torch.cat((pxy - pwh / 2, pxy + pwh / 2), -1).view(n, -1, 4)
    ignore = _batched_box_iou(boxes, per_image).amax(2).view(n, a, h, w) > ignore_iou
    return (~ignore).float()


def yolo_loss(outputs: Sequence[Tensor], targets: Tensor, anchors: Sequence[Tensor],
              img_size: int, num_classes: int, config: LossConfig = LossConfig()) \
        -> tuple[Tensor, dict[str, Tensor]]:
    """The detection loss of raw head outputs against targets.

    Args:
        outputs: raw head outputs, N×(A·(5+C))×h×w each.
        targets: M×6 rows of (image index, class, x1, y1, x2, y2) in input pixels.
        anchors: each head's anchors, A×2 in input pixels.
        img_size: the model's input size.
        num_classes: C.
        config: weights and thresholds.

    Returns:
        The total loss and its parts (``box``, ``obj``, ``cls``), each already weighted.
    """
    device = outputs[0].device
    n = outputs[0].shape[0]
    targets = targets.to(device)
    anchors = [a.to(device) for a in anchors]
    t_xywh = torch.cat(((targets[:, 2:4] + targets[:, 4:6]) / 2,
                        targets[:, 4:6] - targets[:, 2:4]), 1)
    assigned = assign(targets, anchors, [o.shape[-2:] for o in outputs], img_size,
                      config.anchor_t)

    gt_pad = _per_image(targets, n)
    lbox = torch.zeros((), device=device)
    lobj = torch.zeros((), device=device)
    lcls = torch.zeros((), device=device)
    npos = 0
    for out, anc, asg in zip(outputs, anchors, assigned, strict=True):
        _, _, h, w = out.shape
        a = anc.shape[0]
        stride = img_size / h
        p = per_anchor(out, a, num_classes)
        tobj = torch.zeros(p.shape[:4], device=device)
        weight = _not_ignored(p, anc, gt_pad, stride, config.ignore_iou)
        if len(asg.target):
            b, ai, gj, gi = asg.image, asg.anchor, asg.row, asg.col
            ps = p[b, ai, gj, gi]
            # In grid units; strides are powers of two, so the division is exact.
            pxy, pwh = decode(ps, torch.stack((gi, gj), 1), anc[ai], stride)
            pred = torch.cat((pxy / stride, pwh / stride), 1)
            tbox = t_xywh[asg.target] / stride
            iou = 1 - complete_box_iou_loss(box_convert(pred, "cxcywh", "xyxy"),
                                            box_convert(tbox, "cxcywh", "xyxy"), eps=1e-7)
            lbox = lbox + (1 - iou).sum()
            npos += len(asg.target)
            tobj[b, ai, gj, gi] = iou.detach().clamp(min=0).to(tobj.dtype)
            weight[b, ai, gj, gi] = 1.0
            if num_classes > 1:
                tc = torch.zeros_like(ps[:, 5:])
                tc[torch.arange(len(ps), device=device), asg.cls] = 1.0
                lcls = lcls + F.binary_cross_entropy_with_logits(ps[:, 5:], tc,
                                                                 reduction="sum") / num_classes
        bce = F.binary_cross_entropy_with_logits(p[..., 4], tobj, reduction="none")
        lobj = lobj + _BALANCE.get(int(round(stride)), 1.0) * (bce * weight).sum() / weight.numel()
    nl = len(outputs)
    scale_obj = config.obj * (img_size / 640) ** 2 * 3 / nl
    scale_cls = config.cls * num_classes / 80 * 3 / nl
    box = config.box * 3 / nl * lbox / max(npos, 1)
    obj = scale_obj * lobj
    cls = scale_cls * lcls / max(npos, 1)
    parts = {"box": box * n, "obj": obj * n, "cls": cls * n}
    return (box + obj + cls) * n, parts
