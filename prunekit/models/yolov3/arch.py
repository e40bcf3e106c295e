"""The YOLOv3 family's architectures as Darknet-style layer lists.

An architecture (``arch``) is a JSON-serialisable dict: ``name``, ``num_classes``, ``anchors``
(pixels at the model's input size) and ``layers``, a list of Darknet layers (``conv``,
``shortcut``, ``route``, ``upsample``, ``maxpool``, ``yolo``) with absolute layer indices. The
built-in members (:func:`build_arch`) and the Darknet ``.cfg`` parser
(:mod:`prunekit.models.yolov3.darknet`) both produce it, so one module class serves both, and
compaction only has to rewrite the ``filters`` of conv layers for the checkpoint to describe
the smaller model.
"""

from __future__ import annotations

import copy
from typing import Any

from prunekit.errors import ModelError

YOLOV3_ANCHORS = [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90],
                  [156, 198], [373, 326]]
TINY_ANCHORS = [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]]

# name -> (kind, width multiplier, depth multiplier, default input size)
MEMBERS: dict[str, tuple[str, float, float, int]] = {
    "yolov3": ("darknet53", 1.0, 1.0, 416),
    "yolov3-tiny": ("tiny", 1.0, 1.0, 416),
    # The embedded default: Darknet-53's shape (residual stages, three heads, the same couplings
    # that structured pruning must respect) at a quarter of the width and a third of the depth,
    # 160-pixel input; about 2 M parameters, trains to a useful mAP on two CPU cores in minutes.
    "yolov3-small": ("darknet53", 0.25, 0.34, 160),
}


def _width(c: int, width: float) -> int:
    return c if width == 1.0 else max(8, int(round(c * width / 8)) * 8)


def _depth(n: int, depth: float) -> int:
    return n if depth == 1.0 else max(1, int(round(n * depth)))


class _Builder:
    def __init__(self) -> None:
        self.layers: list[dict[str, Any]] = []

    def add(self, **spec: Any) -> int:
        self.layers.append(spec)
        return len(self.layers) - 1

    def conv(self, filters: int, size: int, stride: int = 1, head: bool = False) -> int:
        return self.add(type="conv", filters=filters, size=size, stride=stride, pad=size // 2,
                        bn=not head, act="linear" if head else "leaky")


def build_arch(name: str, num_classes: int, *, width: float | None = None,
               depth: float | None = None) -> dict[str, Any]:
    """The layer list of a family member.

    Args:
        name: ``yolov3``, ``yolov3-tiny`` or ``yolov3-small``.
        num_classes: number of object classes the heads predict.
        width: channel multiplier (default: the member's own).
        depth: residual-block multiplier for Darknet-53 members (default: the member's own).
    """
    if name not in MEMBERS:
        raise ModelError(f"unknown architecture {name!r}; choose one of {', '.join(MEMBERS)}")
    if num_classes < 1:
        raise ModelError(f"--classes must be at least 1, got {num_classes}")
    kind, w0, d0, _ = MEMBERS[name]
    w = w0 if width is None else width
    d = d0 if depth is None else depth
    if not (0 < w <= 4 and 0 < d <= 4):
        raise ModelError(f"width and depth multipliers must lie in (0, 4], got {w} and {d}")
    b = _Builder()
    out = 3 * (5 + num_classes)
    if kind == "tiny":
        anchors = TINY_ANCHORS
        for i, c in enumerate((16, 32, 64, 128, 256, 512)):
            b.conv(_width(c, w), 3)
            b.add(type="maxpool", size=2, stride=1 if i == 5 else 2)
            if i == 4:
                skip = len(b.layers) - 2  # the 256-filter conv before the fifth maxpool
        b.conv(_width(1024, w), 3)
        branch = b.conv(_width(256, w), 1)
        b.conv(_width(512, w), 3)
        b.conv(out, 1, head=True)
        b.add(type="yolo", mask=[3, 4, 5])
        b.add(type="route", layers=[branch])
        b.conv(_width(128, w), 1)
        up = b.add(type="upsample", stride=2)
        b.add(type="route", layers=[up, skip])
        b.conv(_width(256, w), 3)
        b.conv(out, 1, head=True)
        b.add(type="yolo", mask=[1, 2, 3])
    else:
        anchors = YOLOV3_ANCHORS
        b.conv(_width(32, w), 3)
        stage_out = []
        for c, n in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
            b.conv(_width(c, w), 3, 2)
            for _ in range(_depth(n, d)):
                b.conv(_width(c // 2, w), 1)
                b.conv(_width(c, w), 3)
                b.add(type="shortcut", **{"from": len(b.layers) - 3})
            stage_out.append(len(b.layers) - 1)
        skips = [stage_out[3], stage_out[2]]
        for h, (c, mask) in enumerate(((512, [6, 7, 8]), (256, [3, 4, 5]), (128, [0, 1, 2]))):
            if h:
                b.add(type="route", layers=[branch])
                b.conv(_width(c, w), 1)
                up = b.add(type="upsample", stride=2)
                b.add(type="route", layers=[up, skips[h - 1]])
            for _ in range(2):
                b.conv(_width(c, w), 1)
                b.conv(_width(2 * c, w), 3)
            branch = b.conv(_width(c, w), 1)
            b.conv(_width(2 * c, w), 3)
            b.conv(out, 1, head=True)
            b.add(type="yolo", mask=mask)
    return {"name": name, "num_classes": num_classes, "anchors": [list(a) for a in anchors],
            "width": w, "depth": d, "layers": b.layers}


def default_img_size(name: str) -> int:
    return MEMBERS[name][3] if name in MEMBERS else 416


def scale_anchors(arch: dict[str, Any], factor: float) -> dict[str, Any]:
    """A copy of ``arch`` whose anchors are multiplied by ``factor`` (for a new input size)."""
    arch = copy.deepcopy(arch)
    arch["anchors"] = [[round(a * factor, 2) for a in pair] for pair in arch["anchors"]]
    return arch


def absolute(j: int, i: int) -> int:
    """Layer ``i``'s reference ``j`` (negative: relative) as an absolute index before ``i``."""
    k = i + j if j < 0 else j
    if not 0 <= k < i:
        raise ModelError(f"layer {i}: reference to layer {j} points outside layers 0..{i - 1}")
    return k


def head_conv_indices(arch: dict[str, Any]) -> list[int]:
    """Conv layers that feed a ``yolo`` layer directly, in head order: their output channels
    are the detection outputs and are never pruned."""
    layers = arch["layers"]
    return [i - 1 for i, s in enumerate(layers) if s["type"] == "yolo" and i > 0
            and layers[i - 1]["type"] == "conv"]


def head_strides(arch: dict[str, Any]) -> list[int]:
    """Input pixels per grid cell of each ``yolo`` head, in head order."""
    layers = arch["layers"]
    factors: list[float] = []
    for i, spec in enumerate(layers):
        before = factors[i - 1] if i else 1.0
        if spec["type"] in ("conv", "maxpool"):
            factors.append(before * spec.get("stride", 1))
        elif spec["type"] == "upsample":
            factors.append(before / spec.get("stride", 2))
        elif spec["type"] == "route":
            factors.append(factors[absolute(spec["layers"][0], i)])
        else:  # shortcut, yolo
            factors.append(before)
    return [int(factors[i]) for i, s in enumerate(layers) if s["type"] == "yolo"]
