"""Inference: the model's detections for a dataset or a folder, boxes in original pixels.

What turns raw outputs into boxes (decoding, thresholds, NMS where the family uses it, the map
back to original pixels) is the family's :meth:`~prunekit.models.base.Detector.postprocess`;
this module feeds it batches and attaches image ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prunekit.checkpoint import Checkpoint
from prunekit.device import resolve_device, set_threads
from prunekit.errors import PrunekitError
from prunekit.models.base import Detector
from prunekit.onnxfile import OnnxFile


@dataclass
class ImageDetections:
    """Detections of one image, in original-image pixels."""

    image_id: Any
    file_name: str
    boxes_xyxy: Tensor  # K×4
    scores: Tensor  # K
    labels: Tensor  # K, model class indices


def check_thresholds(conf: float, iou: float, max_det: int) -> None:
    if not 0 <= conf < 1:
        raise PrunekitError(f"--conf must lie in [0, 1), got {conf}")
    if not 0 < iou <= 1:
        raise PrunekitError(f"--iou must lie in (0, 1], got {iou}")
    if max_det < 1:
        raise PrunekitError(f"--max-det must be at least 1, got {max_det}")


def detect(model: Detector, batches, *, conf: float = 0.5, iou: float = 0.45,
           max_det: int = 100, device: torch.device | str = "cpu") -> Iterator[ImageDetections]:
    """Run a model over batches from :func:`prunekit.data.coco.loader`.

    Args:
        model: a detector in eval mode, or an exported file's
            :class:`~prunekit.onnxfile.OnnxDetector`.
        batches: an iterable of (images, targets, records).
        conf: score threshold.
        iou: NMS IoU threshold.
        max_det: detections kept per image.
        device: where to run.

    Yields:
        One :class:`ImageDetections` per image, in batch order, boxes in original pixels.
    """
    check_thresholds(conf, iou, max_det)
    model = model.eval().to(device)
    for images, _, records in batches:
        with torch.inference_mode():
            geometries = [r["geometry"] for r in records]
            found = model.postprocess(model(images.to(device), geometries), geometries,
                                      conf=conf, iou=iou, max_det=max_det)
        for rec, d in zip(records, found, strict=True):
            yield ImageDetections(rec["image_id"], rec["file_name"], d.boxes, d.scores,
                                  d.labels)


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


def detect_dataset(ck: Checkpoint | OnnxFile, *, data: str | Path | None = None,
                   images: str | Path | None = None,
                   conf: float = 0.5, iou: float = 0.45, max_det: int = 100,
                   batch_size: int = 16, workers: int = 0, device: str = "auto",
                   threads: int | None = None, attack=None, seed: int = 0) \
        -> tuple[int, list[int], Iterator[ImageDetections]]:
    """Detections for every image of a COCO JSON (``data``) or a folder (``images``).

    Args:
        ck: the checkpoint, or an ONNX file ``prunekit export`` wrote (run by onnxruntime on
            the CPU with the same input transform and post-processing; see
            :mod:`prunekit.onnxfile`).
        data: COCO JSON; ``images`` then overrides its image root.
        images: a folder of images (without ``data``).
        conf: score threshold (the paper's 0.5; use 0.001 for mAP).
        iou: NMS IoU threshold.
        max_det: detections per image.
        batch_size: images per forward pass.
        workers: DataLoader workers.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads (default: unchanged).
        attack: an :class:`prunekit.attack.AttackConfig` to attack each image first (in
            original pixel space; the attacked image is quantised to 8 bits, as a PNG would
            hold it, before detection). Not for a file: gradients do not run through it.
        seed: seed for the attack's random start.

    Returns:
        The number of images, the COCO category id of each model class, and the detections.
    """
    from prunekit.data.coco import CocoDetection, ImageFolder, loader

    check_thresholds(conf, iou, max_det)
    set_threads(threads)
    if data is None and images is None:
        raise PrunekitError("what to detect on? give --data val.json or --images DIR")
    if batch_size < 1:
        raise PrunekitError(f"--batch-size must be at least 1, got {batch_size}")
    if isinstance(ck, OnnxFile):
        if attack is not None:
            raise PrunekitError(
                f"{ck.name} cannot be attacked: gradients do not run through an ONNX file "
                f"(nor through INT8 at all); attack its source checkpoint and detect the images "
                f"with the file, a transferred attack: prunekit attack model.st --data "
                f"{data or 'val.json'} -o adv/, then prunekit detect {ck.name} --data "
                f"adv/{Path(data).name if data else 'val.json'}")
        device = "cpu" if device == "auto" else device
    model = ck.build()
    dev = resolve_device(device)
    want_originals = attack is not None
    if data is not None:
        dataset = CocoDetection(data, model.transform, images=images, classes=model.classes,
                                originals=want_originals)
        has_labels = True
    else:
        dataset = ImageFolder(images, model.transform, originals=want_originals)
        has_labels = False
    ids = category_ids(model.classes, data)
    batches = loader(dataset, batch_size, workers=workers)
    model = model.to(dev)
    if attack is not None:
        from prunekit.attack import attacked_batches

        batches = attacked_batches(model, batches, attack, seed=seed, has_labels=has_labels)
    return len(dataset), ids, detect(model, batches, conf=conf, iou=iou, max_det=max_det,
                                     device=dev)
