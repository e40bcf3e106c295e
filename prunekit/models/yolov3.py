"""The YOLOv3 family as one Darknet-style layer list, and the module that runs it.

An architecture (`arch`) is a JSON-serialisable dict: ``name``, ``num_classes``, ``anchors``
(pixels at the model's input size) and ``layers``, a list of Darknet layers (``conv``,
``shortcut``, ``route``, ``upsample``, ``maxpool``, ``yolo``) with absolute layer indices. The
built-in family (:func:`build_arch`) and the Darknet ``.cfg`` parser
(:mod:`prunekit.models.darknet`) both produce it, so one module class (:class:`Detector`) serves
both, and compaction only has to rewrite the ``filters`` of conv layers for the checkpoint to
describe the smaller model.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.errors import ModelError

YOLOV3_ANCHORS = [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90],
                  [156, 198], [373, 326]]
TINY_ANCHORS = [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]]

# name -> (kind, width multiplier, depth multiplier, default input size)
FAMILY: dict[str, tuple[str, float, float, int]] = {
    "yolov3": ("darknet53", 1.0, 1.0, 416),
    "yolov3-tiny": ("tiny", 1.0, 1.0, 416),
    # The embedded default: Darknet-53's shape (residual stages, three heads, the same couplings
    # that structured pruning must respect) at a quarter of the width and a third of the depth,
    # 160-pixel input; about 2 M parameters, trains to a useful mAP on two CPU cores in minutes.
    "yolov3-small": ("darknet53", 0.25, 0.34, 160),
}

LEAKY_SLOPE = 0.1
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # Rec. 601 luma


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
    if name not in FAMILY:
        raise ModelError(f"unknown architecture {name!r}; choose one of {', '.join(FAMILY)}")
    if num_classes < 1:
        raise ModelError(f"--classes must be at least 1, got {num_classes}")
    kind, w0, d0, _ = FAMILY[name]
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
    return FAMILY[name][3] if name in FAMILY else 416


def scale_anchors(arch: dict[str, Any], factor: float) -> dict[str, Any]:
    """A copy of ``arch`` whose anchors are multiplied by ``factor`` (for a new input size)."""
    arch = copy.deepcopy(arch)
    arch["anchors"] = [[round(a * factor, 2) for a in pair] for pair in arch["anchors"]]
    return arch


# ----------------------------------------------------------------------------------- modules


class ConvBlock(nn.Module):
    """Conv → BatchNorm → LeakyReLU, each its own module so DeepLIFT's rules reach it."""

    def __init__(self, c_in: int, spec: dict[str, Any]) -> None:
        super().__init__()
        bn = bool(spec.get("bn", True))
        self.conv = nn.Conv2d(c_in, spec["filters"], spec["size"], spec["stride"],
                              spec.get("pad", spec["size"] // 2), bias=not bn)
        self.bn = nn.BatchNorm2d(spec["filters"], momentum=0.03) if bn else None
        act = spec.get("act", "leaky")
        if act == "leaky":
            self.act = nn.LeakyReLU(LEAKY_SLOPE)
        elif act == "relu":
            self.act = nn.ReLU()
        elif act == "linear":
            self.act = None
        else:
            raise ModelError(f"activation {act!r} is not supported; use leaky, relu or linear")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.act is None else self.act(x)


class Shortcut(nn.Module):
    """Residual addition with an earlier layer's output (Darknet ``[shortcut]``)."""

    def __init__(self, source: int) -> None:
        super().__init__()
        self.source = source

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        return x + other


class Route(nn.Module):
    """Channel concatenation of earlier layers' outputs (Darknet ``[route]``)."""

    def __init__(self, sources: list[int]) -> None:
        super().__init__()
        self.sources = list(sources)

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0] if len(xs) == 1 else torch.cat(xs, 1)


class MaxPool(nn.Module):
    """Darknet's maxpool: output ceil(n / stride), padding right/bottom by replicating edges,
    which equals Darknet's max over the valid window."""

    def __init__(self, size: int, stride: int) -> None:
        super().__init__()
        self.size, self.stride = size, stride
        self.pool = nn.MaxPool2d(size, stride)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph = (math.ceil(h / self.stride) - 1) * self.stride + self.size - h
        pw = (math.ceil(w / self.stride) - 1) * self.stride + self.size - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.pool(x)


class YoloLayer(nn.Module):
    """Marks a detection head; holds its anchors (pixels at the input size)."""

    def __init__(self, anchors: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x


class Grey(nn.Module):
    """Rec. 601 luma replicated to three channels: part of the model's input pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weights", torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.weights).sum(1, keepdim=True).expand(-1, 3, -1, -1)


def default_input(img_size: int, colour: str = "rgb") -> dict[str, Any]:
    """The ``input`` metadata: size, colour mode and normalisation (none: floats in [0, 1])."""
    if colour not in ("rgb", "grey"):
        raise ModelError(f"colour mode {colour!r} is unknown; use rgb or grey")
    if img_size < 32 or img_size % 32:
        raise ModelError(f"--img-size must be a positive multiple of 32, got {img_size}")
    return {"size": img_size, "colour": colour, "range": [0.0, 1.0], "normalise": "none",
            "letterbox": "pad to square with grey 114/255, then resize"}


class Detector(nn.Module):
    """A YOLOv3-family detector built from an ``arch`` layer list.

    ``forward`` takes N×3×H×W floats in [0, 1] at the model's input size and returns the raw head
    outputs, one N×(A·(5+C))×h×w tensor per ``yolo`` layer, in layer order.
    """

    def __init__(self, arch: dict[str, Any], input_spec: dict[str, Any] | None = None,
                 classes: list[str] | None = None) -> None:
        super().__init__()
        self.arch = copy.deepcopy(arch)
        self.input_spec = dict(input_spec or default_input(416))
        self.num_classes = int(arch["num_classes"])
        self.classes = list(classes) if classes else [f"class{i}" for i in range(self.num_classes)]
        if len(self.classes) != self.num_classes:
            raise ModelError(f"{len(self.classes)} class names for a model with "
                             f"{self.num_classes} classes; give exactly one name per class")
        self.grey = Grey() if self.input_spec.get("colour") == "grey" else None
        anchors = arch["anchors"]
        self.layers = nn.ModuleList()
        channels: list[int] = []
        c = 3
        keep: set[int] = set()
        for i, spec in enumerate(arch["layers"]):
            t = spec["type"]
            if t == "conv":
                m: nn.Module = ConvBlock(c, spec)
                c = spec["filters"]
            elif t == "shortcut":
                src = _abs(spec["from"], i)
                if channels[src] != c:
                    raise ModelError(f"layer {i}: shortcut adds {channels[src]} channels "
                                     f"(layer {src}) to {c}; the widths must match")
                m = Shortcut(src)
                keep.add(src)
            elif t == "route":
                srcs = [_abs(j, i) for j in spec["layers"]]
                m = Route(srcs)
                c = sum(channels[j] for j in srcs)
                keep.update(srcs)
            elif t == "upsample":
                m = nn.Upsample(scale_factor=spec.get("stride", 2), mode="nearest")
            elif t == "maxpool":
                m = MaxPool(spec["size"], spec["stride"])
            elif t == "yolo":
                mask = spec["mask"]
                expected = len(mask) * (5 + self.num_classes)
                if c != expected:
                    raise ModelError(f"layer {i}: yolo head gets {c} channels, expected "
                                     f"{len(mask)}·(5+{self.num_classes}) = {expected}")
                m = YoloLayer([anchors[k] for k in mask])
            else:
                raise ModelError(f"layer {i}: layer type {t!r} is not supported")
            self.layers.append(m)
            channels.append(c)
        self._keep = keep
        self.channels = channels

    @property
    def img_size(self) -> int:
        return int(self.input_spec["size"])

    def heads(self) -> list[YoloLayer]:
        return [m for m in self.layers if isinstance(m, YoloLayer)]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.grey is not None:
            x = self.grey(x)
        saved: dict[int, Tensor] = {}
        outputs: list[Tensor] = []
        for i, m in enumerate(self.layers):
            if isinstance(m, Shortcut):
                x = m(x, saved[m.source])
            elif isinstance(m, Route):
                x = m(*(saved[j] for j in m.sources))
            elif isinstance(m, YoloLayer):
                outputs.append(m(x))
            else:
                x = m(x)
            if i in self._keep:
                saved[i] = x
        return tuple(outputs)

    def decode(self, outputs: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """Boxes from raw head outputs: N×P×(5+C) with centre x, y, width, height in input
        pixels, then objectness and class probabilities (sigmoids)."""
        return decode(outputs, [h.anchors for h in self.heads()], self.img_size, self.num_classes)


def decode(outputs, anchors: list[Tensor], img_size: int, num_classes: int) -> Tensor:
    decoded = []
    for out, anc in zip(outputs, anchors, strict=True):
        n, _, h, w = out.shape
        a = anc.shape[0]
        p = out.view(n, a, 5 + num_classes, h, w).permute(0, 1, 3, 4, 2).float()
        stride = img_size / h
        gy, gx = torch.meshgrid(torch.arange(h, device=out.device),
                                torch.arange(w, device=out.device), indexing="ij")
        grid = torch.stack((gx, gy), -1).view(1, 1, h, w, 2)
        xy = (p[..., :2].sigmoid() + grid) * stride
        wh = p[..., 2:4].clamp(max=12).exp() * anc.to(out.device).view(1, a, 1, 1, 2)
        decoded.append(torch.cat((xy, wh, p[..., 4:].sigmoid()), -1)
                       .reshape(n, -1, 5 + num_classes))
    return torch.cat(decoded, 1)


def _abs(j: int, i: int) -> int:
    k = i + j if j < 0 else j
    if not 0 <= k < i:
        raise ModelError(f"layer {i}: reference to layer {j} points outside layers 0..{i - 1}")
    return k


def fuse_for_inference(model: Detector) -> Detector:
    """A copy for inference: BatchNorm folded into the conv before it, LeakyReLU in place.

    The same function (to float rounding: a few 1e-7), with two fewer passes over every
    activation; what a deployment does, so ``bench`` times this form of every model alike.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvBlock):
            if m.bn is not None:
                m.conv, m.bn = fuse_conv_bn_eval(m.conv, m.bn), None
            if m.act is not None:
                m.act.inplace = True
    return model


def conv_layers(model: Detector) -> list[tuple[int, ConvBlock]]:
    """(layer index, block) for every conv layer, in order."""
    return [(i, m) for i, m in enumerate(model.layers) if isinstance(m, ConvBlock)]


def head_conv_indices(arch: dict[str, Any]) -> list[int]:
    """Conv layers that feed a ``yolo`` layer directly, in head order: their output channels
    are the detection outputs and are never pruned."""
    layers = arch["layers"]
    return [i - 1 for i, s in enumerate(layers) if s["type"] == "yolo" and i > 0
            and layers[i - 1]["type"] == "conv"]
