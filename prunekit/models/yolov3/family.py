"""The YOLOv3 family: its members, fresh models, Darknet import, and input specifications."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch

from prunekit.errors import ModelError
from prunekit.models.base import (
    COLOURS,
    MAX_INPUT_SIDE,
    Detector,
    Family,
    Option,
    default_names,
)
from prunekit.models.yolov3 import darknet
from prunekit.models.yolov3.arch import (
    MEMBERS,
    build_arch,
    default_img_size,
    head_conv_indices,
    scale_anchors,
)
from prunekit.models.yolov3.detector import YOLOv3


class YOLOv3Family(Family):
    """``yolov3``, ``yolov3-tiny``, ``yolov3-small``, and any Darknet ``.cfg``."""

    name: ClassVar[str] = "yolov3"
    members: ClassVar[tuple[str, ...]] = tuple(MEMBERS)
    init_options: ClassVar[tuple[Option, ...]] = (
        Option("width", float, "Channel multiplier (default: the member's)."),
        Option("depth", float, "Depth multiplier (default: the member's)."),
        Option("cfg", Path, "A Darknet .cfg to build instead of a member.",
               imports=True),
        Option("weights", Path, "Darknet .weights for --cfg.", imports=True),
    )
    small: ClassVar[dict[str, dict[str, Any]]] = {
        "yolov3-small": {"img_size": 64, "options": {"width": 0.125}},
        "yolov3-tiny": {"img_size": 64, "options": {"width": 0.25}},
    }

    def build(self, arch: dict[str, Any], input_spec: dict[str, Any],
              classes: list[str]) -> Detector:
        return YOLOv3(arch, input_spec, classes)

    def create(self, member: str, classes: list[str], *, img_size: int | None = None,
               grey: bool = False, options: dict[str, Any] | None = None) -> Detector:
        options = dict(options or {})
        unknown = sorted(set(options) - {"width", "depth"})
        if unknown:
            raise ModelError(f"{member} has no option --{unknown[0]}; YOLOv3 members take "
                             f"--width and --depth")
        arch = build_arch(member, len(classes), **options)
        size = default_img_size(member) if img_size is None else img_size
        if member == "yolov3-small":
            # The small member is made for small inputs: its anchors are the standard ones in
            # proportion to the image (yolov3 and tiny keep Darknet's, whatever the size).
            arch = scale_anchors(arch, size / 416)
        model = YOLOv3(arch, self.input_spec(size=size, colour="grey" if grey else "rgb"),
                       classes)
        _init_head_biases(model)
        return model

    def import_files(self, files: dict[str, Any], classes: list[str] | None, *,
                     img_size: int | None = None, grey: bool = False) -> Detector:
        if set(files) & {"width", "depth"}:
            raise ModelError("--width and --depth change a member; a Darknet .cfg gives its "
                             "own widths and depths (edit it instead)")
        if "cfg" not in files:
            raise ModelError("--weights needs --cfg: Darknet weights only make sense with "
                             "their .cfg")
        cfg = Path(files["cfg"])
        arch, cfg_size = darknet.parse_cfg(cfg)
        n = arch["num_classes"]
        if classes is not None and len(classes) != n:
            raise ModelError(f"{cfg} defines {n} classes but {len(classes)} were given; edit "
                             f"the [yolo] sections or give one name per class")
        spec = self.input_spec(size=cfg_size if img_size is None else img_size,
                               colour="grey" if grey else "rgb")
        model = YOLOv3(arch, spec, classes or default_names(n))
        if "weights" in files:
            path = Path(files["weights"])
            try:
                data = path.read_bytes()
            except OSError as e:
                raise ModelError(f"cannot read {path}: {e.strerror or e}") from None
            darknet.load_weights(model, data, str(path))
        return model

    def input_spec(self, spec: dict[str, Any] | None = None, *, size: int | None = None,
                   colour: str | None = None) -> dict[str, Any]:
        """Floats in [0, 1], letterboxed to a square ``size`` (a multiple of 32), colour or
        grey."""
        spec = dict(spec or {"size": 416, "colour": "rgb", "range": [0.0, 1.0],
                             "normalise": "none",
                             "letterbox": "pad to square with grey 114/255, then resize"})
        if colour is not None:
            if colour not in COLOURS:
                raise ModelError(f"colour mode {colour!r} is unknown; use rgb or grey")
            spec["colour"] = colour
        if size is not None:
            if size < 32 or size % 32:
                raise ModelError(f"--img-size must be a positive multiple of 32, got {size}")
            if size > MAX_INPUT_SIDE:
                raise ModelError(f"--img-size {size} is too large: at most {MAX_INPUT_SIDE} "
                                 f"pixels")
            spec["size"] = size
        return spec


def _init_head_biases(model: YOLOv3) -> None:
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
