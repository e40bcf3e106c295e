"""Inference: decode head outputs, threshold, class-aware NMS, map boxes to original pixels.

A box's score is objectness × class probability (YOLOv3's convention). Every class whose score
clears the threshold yields a candidate (multi-label), which is what mAP at a low threshold
(0.001) expects; at the paper's threshold (0.5) it rarely matters. NMS is
:func:`torchvision.ops.batched_nms`, per class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from prunekit.errors import PrunekitError

MAX_CANDIDATES = 30_000


@dataclass
class ImageDetections:
    """Detections of one image, in original-image pixels."""

    image_id: Any
    file_name: str
    boxes_xyxy: Tensor  # K×4
    scores: Tensor  # K
    labels: Tensor  # K, model class indices


def postprocess(decoded: Tensor, *, conf: float = 0.5, iou: float = 0.45,
                max_det: int = 100) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Boxes (xyxy, input pixels), scores and labels per image from decoded predictions.

    Args:
        decoded: N×P×(5+C) from :meth:`Detector.decode`.
        conf: minimum score (objectness × class probability).
        iou: NMS IoU threshold.
        max_det: most detections kept per image.
    """
    results = []
    for pred in decoded:
        obj = pred[:, 4:5]
        scores_all = obj * pred[:, 5:] if pred.shape[1] > 5 else obj
        keep = scores_all > conf
        idx, cls = keep.nonzero(as_tuple=True)
        scores = scores_all[idx, cls]
        if len(scores) > MAX_CANDIDATES:
            top = scores.topk(MAX_CANDIDATES).indices
            idx, cls, scores = idx[top], cls[top], scores[top]
        xywh = pred[idx, :4]
        boxes = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
        kept = batched_nms(boxes.float(), scores.float(), cls, iou)[:max_det]
        results.append((boxes[kept], scores[kept], cls[kept]))
    return results


def check_thresholds(conf: float, iou: float, max_det: int) -> None:
    if not 0 <= conf < 1:
        raise PrunekitError(f"--conf must lie in [0, 1), got {conf}")
    if not 0 < iou <= 1:
        raise PrunekitError(f"--iou must lie in (0, 1], got {iou}")
    if max_det < 1:
        raise PrunekitError(f"--max-det must be at least 1, got {max_det}")


def detect(model: nn.Module, batches, *, conf: float = 0.5, iou: float = 0.45,
           max_det: int = 100, device: torch.device | str = "cpu",
           attack: Callable[[nn.Module, Tensor, Tensor, list[dict]], Tensor] | None = None) \
        -> Iterator[ImageDetections]:
    """Run a model over batches from :func:`prunekit.data.coco.loader`.

    Args:
        model: a detector in eval mode.
        batches: an iterable of (images, targets, records).
        conf: score threshold.
        iou: NMS IoU threshold.
        max_det: detections kept per image.
        device: where to run.
        attack: optional ``attack(model, images, targets, records) -> adversarial images``,
            applied to each batch before detection.

    Yields:
        One :class:`ImageDetections` per image, in batch order, boxes in original pixels.
    """
    check_thresholds(conf, iou, max_det)
    model = model.eval().to(device)
    for images, targets, records in batches:
        images = images.to(device)
        if attack is not None:
            images = attack(model, images, targets, records)
        with torch.inference_mode():
            per_image = postprocess(model.decode(model(images)), conf=conf, iou=iou,
                                    max_det=max_det)
        for rec, (boxes, scores, labels) in zip(records, per_image, strict=True):
            w, h = rec["size"]
            orig = rec["letterbox"].to_original(boxes.cpu().float())
            orig[:, 0::2] = orig[:, 0::2].clamp(0, w)
            orig[:, 1::2] = orig[:, 1::2].clamp(0, h)
            yield ImageDetections(rec["image_id"], rec["file_name"], orig, scores.cpu().float(),
                                  labels.cpu())


def to_frame(results: Iterable[ImageDetections], ids: list[int]):
    """Detections as the ``pandas.DataFrame`` :func:`prunekit.evaluate.evaluate` takes (COCO
    ids, xywh boxes); classes without a COCO id in the dataset are left out."""
    import pandas as pd

    rows = []
    for d in results:
        for (x1, y1, x2, y2), s, k in zip(d.boxes_xyxy.tolist(), d.scores.tolist(),
                                          d.labels.tolist(), strict=True):
            if ids[k] >= 0:
                rows.append((d.image_id, ids[k], s, x1, y1, x2 - x1, y2 - y1))
    return pd.DataFrame(rows, columns=["image_id", "category_id", "score", "x", "y", "w", "h"])


def category_ids(classes: list[str], gt_json: str | Path | None) -> list[int]:
    """COCO category id for each model class: by name from the dataset, else 1, 2, ..."""
    if gt_json is None:
        return list(range(1, len(classes) + 1))
    from prunekit.data.coco import read_categories

    by_name = {c["name"]: c["id"] for c in read_categories(gt_json)}
    return [by_name.get(name, -1) for name in classes]


def detect_dataset(ck, *, data: str | Path | None = None, images: str | Path | None = None,
                   conf: float = 0.5, iou: float = 0.45, max_det: int = 100,
                   batch_size: int = 16, workers: int = 0, device: str = "auto",
                   attack=None, seed: int = 0) \
        -> tuple[int, list[int], Iterator[ImageDetections]]:
    """Detections for every image of a COCO JSON (``data``) or a folder (``images``).

    Args:
        ck: the checkpoint.
        data: COCO JSON; ``images`` then overrides its image root.
        images: a folder of images (without ``data``).
        conf: score threshold (the paper's 0.5; use 0.001 for mAP).
        iou: NMS IoU threshold.
        max_det: detections per image.
        batch_size: images per forward pass.
        workers: DataLoader workers.
        device: ``auto``, ``cpu`` or ``cuda``.
        attack: an :class:`prunekit.attack.AttackConfig` to attack each image first (in
            original pixel space; the attacked image is quantised to 8 bits, as a PNG would
            hold it, before detection).
        seed: seed for the attack's random start.

    Returns:
        The number of images, the COCO category id of each model class, and the detections.
    """
    from prunekit.bench import resolve_device
    from prunekit.data.coco import CocoDetection, ImageFolder, loader

    check_thresholds(conf, iou, max_det)
    if data is None and images is None:
        raise PrunekitError("what to detect on? give --data val.json or --images DIR")
    if batch_size < 1:
        raise PrunekitError(f"--batch-size must be at least 1, got {batch_size}")
    model = ck.build()
    dev = resolve_device(device)
    want_originals = attack is not None
    if data is not None:
        dataset = CocoDetection(data, model.img_size, images=images, classes=model.classes,
                                originals=want_originals)
        has_labels = True
    else:
        dataset = ImageFolder(images, model.img_size, originals=want_originals)
        has_labels = False
    ids = category_ids(model.classes, data)
    batches = loader(dataset, batch_size, workers=workers)
    model = model.to(dev)
    if attack is not None:
        from prunekit.attack import attacked_batches

        batches = attacked_batches(model, batches, attack, seed=seed, has_labels=has_labels)
    return len(dataset), ids, detect(model, batches, conf=conf, iou=iou, max_det=max_det,
                                     device=dev)
