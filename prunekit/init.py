"""Create a detector checkpoint: a family member with fresh weights, or a family's own files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prunekit import checkpoint
from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.models import registry
from prunekit.models.base import default_names


def init(arch: str | None = None, *, classes: int | None = None, names: list[str] | None = None,
         dataset: str | Path | None = None, img_size: int | None = None, grey: bool = False,
         width: float | None = None, depth: float | None = None, cfg: str | Path | None = None,
         weights: str | Path | None = None, hf: str | Path | None = None,
         seed: int = 0) -> Checkpoint:
    """Build a detector checkpoint.

    Args:
        arch: a family member (e.g. ``yolov3-small``; :func:`prunekit.models.members`); not
            with import files.
        classes: number of classes (or given by ``names`` or ``dataset``).
        names: class names in category-id order.
        dataset: a COCO JSON whose categories give the classes.
        img_size: input size (default: the member's, or the imported files').
        grey: feed the model Rec. 601 grey images (recorded in ``input``).
        width: channel multiplier override (YOLOv3 members).
        depth: depth multiplier override (YOLOv3 members).
        cfg: a Darknet ``.cfg`` to import instead of a family member.
        weights: a Darknet ``.weights`` file for ``cfg``.
        hf: a Hugging Face ``save_pretrained`` folder (Deformable DETR) to import.
        seed: seed for the random initialisation.
    """
    files = {k: Path(v) for k, v in (("cfg", cfg), ("weights", weights), ("hf", hf))
             if v is not None}
    if (arch is None) == (not files):
        raise PrunekitError("give either an architecture name or files to import (--cfg, "
                            "--hf), not both or neither (e.g. `prunekit init yolov3-small "
                            "--classes 6`)")
    names = _class_names(classes, names, dataset)
    given = names  # what the user named (the history records it), before default names
    if names is None and classes is not None:
        if classes < 1:
            raise PrunekitError(f"--classes must be at least 1, got {classes}")
        names = default_names(classes)
    torch.manual_seed(seed)
    if files:
        family = registry.importer(list(files))
        model = family.import_files(files, names, img_size=img_size, grey=grey)
    else:
        family = registry.family_of(arch)
        if names is None:
            raise PrunekitError("how many classes? give --classes N, --names a,b,... or "
                                "--dataset train.json")
        options = {k: v for k, v in (("width", width), ("depth", depth)) if v is not None}
        model = family.create(arch, names, img_size=img_size, grey=grey, options=options)
    ck = checkpoint.from_model(model)
    args: dict[str, Any] = {"arch": arch, "classes": model.num_classes, "names": given,
                            "img_size": model.input_spec.get("size"), "grey": grey,
                            "width": width, "depth": depth, "cfg": str(cfg) if cfg else None,
                            "weights": str(weights) if weights else None,
                            "hf": str(hf) if hf else None, "seed": seed}
    return ck.add_history("init", args)


def _class_names(classes: int | None, names: list[str] | None,
                 dataset: str | Path | None) -> list[str] | None:
    """Class names from ``--names`` or ``--dataset`` (checked against ``--classes``), or
    None."""
    if dataset is not None:
        if names:
            raise PrunekitError("give --dataset or --names, not both")
        from prunekit.data.coco import read_categories

        names = [c["name"] for c in read_categories(dataset)]
    if names is not None:
        if classes is not None and classes != len(names):
            raise PrunekitError(f"--classes {classes} but {len(names)} names were given; drop "
                                f"--classes or give one name per class")
        if len(set(names)) != len(names):
            raise PrunekitError("class names must be unique")
        return list(names)
    return None
