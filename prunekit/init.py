"""Create a detector checkpoint: a family member with fresh weights, or Darknet files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from prunekit import checkpoint
from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.models import Detector, build_arch, darknet, default_img_size, default_input
from prunekit.models.yolov3 import head_conv_indices, scale_anchors


def init(arch: str | None = None, *, classes: int | None = None, names: list[str] | None = None,
         dataset: str | Path | None = None, img_size: int | None = None, grey: bool = False,
         width: float | None = None, depth: float | None = None, cfg: str | Path | None = None,
         weights: str | Path | None = None, seed: int = 0) -> Checkpoint:
    """Build a detector checkpoint.

    Args:
        arch: a family member (``yolov3``, ``yolov3-tiny``, ``yolov3-small``); not with ``cfg``.
        classes: number of classes (or given by ``names`` or ``dataset``).
        names: class names in category-id order.
        dataset: a COCO JSON whose categories give the classes.
        img_size: input size (default: the member's, or the cfg's).
        grey: feed the model Rec. 601 grey images (recorded in ``input``).
        width: channel multiplier override.
        depth: depth multiplier override.
        cfg: a Darknet ``.cfg`` to build instead of a family member.
        weights: a Darknet ``.weights`` file for ``cfg``.
        seed: seed for the random initialisation.
    """
    if (arch is None) == (cfg is None):
        raise PrunekitError("give either an architecture name or --cfg, not both or neither "
                            "(e.g. `prunekit init yolov3-small --classes 6`)")
    if weights is not None and cfg is None:
        raise PrunekitError("--weights needs --cfg: Darknet weights only make sense with their "
                            ".cfg")
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
    torch.manual_seed(seed)
    if cfg is not None:
        spec, cfg_size = darknet.parse_cfg(cfg)
        n = spec["num_classes"]
        if classes is not None and classes != n:
            raise PrunekitError(f"{cfg} defines {n} classes but --classes {classes} was given; "
                                f"edit the [yolo] sections or drop --classes")
        if names is not None and len(names) != n:
            raise PrunekitError(f"{cfg} defines {n} classes but {len(names)} names were given")
        size = img_size or cfg_size
        model = Detector(spec, default_input(size, "grey" if grey else "rgb"), names)
        if weights is not None:
            path = Path(weights)
            try:
                data = path.read_bytes()
            except OSError as e:
                raise PrunekitError(f"cannot read {path}: {e.strerror or e}") from None
            darknet.load_weights(model, data, str(path))
    else:
        n = len(names) if names is not None else classes
        if n is None:
            raise PrunekitError("how many classes? give --classes N, --names a,b,... or "
                                "--dataset train.json")
        spec = build_arch(arch, n, width=width, depth=depth)
        size = img_size or default_img_size(arch)
        if arch == "yolov3-small":
            # The small member is made for small inputs: its anchors are the standard ones in
            # proportion to the image (yolov3 and tiny keep Darknet's, whatever the size).
            spec = scale_anchors(spec, size / 416)
        model = Detector(spec, default_input(size, "grey" if grey else "rgb"), names)
        _init_head_biases(model)
    ck = checkpoint.from_model(model)
    args: dict[str, Any] = {"arch": arch, "classes": n, "names": names, "img_size": size,
                            "grey": grey, "width": width, "depth": depth,
                            "cfg": str(cfg) if cfg else None,
                            "weights": str(weights) if weights else None, "seed": seed}
    return ck.add_history("init", args)


def _init_head_biases(model: Detector) -> None:
    """Start objectness at the prior of about eight objects per 640-pixel image and classes
    near 1/C, so early training is not swamped by thousands of confident false positives."""
    size = model.img_size
    with torch.no_grad():
        outputs = model.eval()(torch.zeros(1, 3, size, size))
        for i, out in zip(head_conv_indices(model.arch), outputs, strict=True):
            stride = size / out.shape[-1]
            b = model.layers[i].conv.bias.view(-1, 5 + model.num_classes)
            b[:, 4] = math.log(8 / (640 / stride) ** 2)
            b[:, 5:] = math.log(0.6 / max(model.num_classes - 0.99, 0.01))
