"""The layers a YOLOv3-family layer list is made of, one module each (Darknet's sections)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.errors import ModelError

LEAKY_SLOPE = 0.1


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


def conv_layers(model: nn.Module) -> list[tuple[int, ConvBlock]]:
    """(layer index, block) for every conv layer of a YOLOv3-family model, in order."""
    return [(i, m) for i, m in enumerate(model.layers) if isinstance(m, ConvBlock)]
