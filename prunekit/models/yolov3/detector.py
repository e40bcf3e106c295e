"""The YOLOv3 family's detector: one Darknet-style layer list, run by one module class.

:class:`YOLOv3` builds its layers from an ``arch`` (:mod:`prunekit.models.yolov3.arch`) and
implements the family interface (:class:`~prunekit.models.base.Detector`) by delegating to the
family's loss, decoder, evidence, channel groups and deployment modules.
"""

from __future__ import annotations

import copy
import json
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.errors import ModelError
from prunekit.models.base import (
    ChannelGroup,
    Detections,
    Detector,
    Geometry,
    Graph,
    Grey,
    InputTransform,
    Outputs,
    Quantization,
    Target,
)
from prunekit.models.yolov3 import boxes, deploy, evidence, groups
from prunekit.models.yolov3.arch import absolute, head_strides
from prunekit.models.yolov3.layers import ConvBlock, MaxPool, Route, Shortcut, YoloLayer
from prunekit.models.yolov3.loss import target_rows, yolo_loss
from prunekit.models.yolov3.transform import Letterbox

_IMAGES = ("N x 3 x H x W floats in [0, 1], RGB, letterboxed to the input size (grey 114 "
           "padding); a grey model converts to grey inside the graph")


class YOLOv3(Detector):
    """A YOLOv3-family detector built from an ``arch`` layer list.

    ``forward`` takes N×3×S×S floats in [0, 1] at the model's input size and returns the raw head
    outputs, one N×(A·(5+C))×h×w tensor per ``yolo`` layer, in layer order.
    """

    family: ClassVar[str] = "yolov3"
    loss_sums_batch: ClassVar[bool] = True  # the mean times the batch size (see loss.py)
    runtimes: ClassVar[tuple[str, ...]] = ("onednn-graph", "eager", "onnxruntime")

    def __init__(self, arch: dict[str, Any], input_spec: dict[str, Any],
                 classes: list[str]) -> None:
        super().__init__()
        self.arch = copy.deepcopy(arch)
        self.input_spec = dict(input_spec)
        self.classes = list(classes)
        if len(self.classes) != int(arch["num_classes"]):
            raise ModelError(f"{len(self.classes)} class names for a model with "
                             f"{arch['num_classes']} classes; give exactly one name per class")
        self.grey = Grey() if self.input_spec.get("colour") == "grey" else None
        self.layers = nn.ModuleList()
        self.channels: list[int] = []
        self._keep: set[int] = set()
        self._transform = Letterbox(self.img_size)
        c = 3
        for i, spec in enumerate(arch["layers"]):
            m, c = self._layer(i, spec, c)
            self.layers.append(m)
            self.channels.append(c)

    def _layer(self, i: int, spec: dict[str, Any], c: int) -> tuple[nn.Module, int]:
        """Layer ``i`` and its output channels, given ``c`` input channels."""
        t = spec["type"]
        if t == "conv":
            return ConvBlock(c, spec), spec["filters"]
        if t == "shortcut":
            src = absolute(spec["from"], i)
            if self.channels[src] != c:
                raise ModelError(f"layer {i}: shortcut adds {self.channels[src]} channels "
                                 f"(layer {src}) to {c}; the widths must match")
            self._keep.add(src)
            return Shortcut(src), c
        if t == "route":
            srcs = [absolute(j, i) for j in spec["layers"]]
            self._keep.update(srcs)
            return Route(srcs), sum(self.channels[j] for j in srcs)
        if t == "upsample":
            return nn.Upsample(scale_factor=spec.get("stride", 2), mode="nearest"), c
        if t == "maxpool":
            return MaxPool(spec["size"], spec["stride"]), c
        if t == "yolo":
            mask = spec["mask"]
            expected = len(mask) * (5 + self.num_classes)
            if c != expected:
                raise ModelError(f"layer {i}: yolo head gets {c} channels, expected "
                                 f"{len(mask)}·(5+{self.num_classes}) = {expected}")
            return YoloLayer([self.arch["anchors"][k] for k in mask]), c
        raise ModelError(f"layer {i}: layer type {t!r} is not supported")

    @property
    def img_size(self) -> int:
        return int(self.input_spec["size"])

    @property
    def transform(self) -> InputTransform:
        return self._transform

    def heads(self) -> list[YoloLayer]:
        return [m for m in self.layers if isinstance(m, YoloLayer)]

    def anchors(self) -> list[Tensor]:
        return [h.anchors for h in self.heads()]

    def forward(self, x: Tensor, geometries: list[Geometry] | None = None) -> Outputs:
        # The letterbox's padding is plain image content to YOLOv3: geometries are not needed.
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

    # ------------------------------------------------------------------ the family's seams

    def loss(self, outputs: Outputs, targets: list[Target]) -> tuple[Tensor, dict[str, Tensor]]:
        return yolo_loss(outputs, target_rows(targets), self.anchors(), self.img_size,
                         self.num_classes)

    def vanish(self, outputs: Outputs) -> Tensor:
        """−softplus(objectness logit), averaged per head: every objectness driven to zero."""
        c = 5 + self.num_classes
        total = outputs[0].new_zeros(())
        for out in outputs:
            n, _, h, w = out.shape
            logits = out.view(n, -1, c, h, w)[:, :, 4]
            total = total - F.softplus(logits.float()).mean()
        return total

    def postprocess(self, outputs: Outputs, geometries: list[Geometry], *, conf: float = 0.5,
                    iou: float = 0.45, max_det: int = 100) -> list[Detections]:
        decoded = boxes.predictions(outputs, self.anchors(), self.img_size, self.num_classes)
        return boxes.postprocess(decoded, geometries, conf=conf, iou=iou, max_det=max_det)

    def evidence(self, outputs: Outputs, targets: list[Target]) -> Tensor:
        return evidence.evidence(outputs, target_rows(targets), len(targets), self.anchors(),
                                 self.img_size, self.num_classes)

    def ideal_outputs(self, targets: list[Target]) -> Outputs:
        grids = [(self.img_size // s, self.img_size // s) for s in head_strides(self.arch)]
        return boxes.ideal_outputs(targets, self.anchors(), grids, self.img_size,
                                   self.num_classes)

    def channel_groups(self) -> list[ChannelGroup]:
        return groups.channel_groups(self.arch)

    def compacted_arch(self, state: dict[str, Tensor]) -> dict[str, Any]:
        return groups.compacted_arch(self.arch, state)

    def deployed(self, runtime: str = "eager") -> nn.Module:
        return deploy.deployed(self, runtime)

    def quantization(self) -> Quantization:
        """Every convolution, LeakyReLU, residual addition, upsampling and concatenation in
        integers after the first convolution, so activations stay uint8 from there to the
        heads (onnxruntime: QLinearConv, QLinearLeakyRelu, QLinearAdd, QLinearConcat, and
        Resize on uint8). The first convolution, which reads the image, stays in float: its
        three input channels make a poor integer matrix product (onnxruntime 1.32, two threads,
        AVX2: 2.9 ms in INT8 against 1.3 ms in float on the 75 % compacted yolov3-416, and no
        slower in float on the dense model; with AVX-512 VNNI the whole file takes the same time
        either way at two threads and 10 % longer with it in INT8 at one), and quantizing the
        image itself costs accuracy
        (the embedded baseline: mAP50 −0.15 points with it, −0.09 without)."""
        first = next(i for i, m in enumerate(self.layers) if isinstance(m, ConvBlock))
        return Quantization(
            op_types=("Conv", "LeakyRelu", "Add", "Concat", "Resize", "MaxPool"),
            float_modules={f"*.layers.{first}.*": "the first convolution, which reads the "
                                                  "image: faster in float, and more accurate"})

    def graph(self, *, decoded: bool = False, deployed: bool = True) -> Graph:
        net = self.deployed("onnxruntime") if deployed else copy.deepcopy(self).eval()
        c = 5 + self.num_classes
        if decoded:
            return Graph(boxes.Decoded(net, self.anchors(), self.img_size, self.num_classes),
                         ("images",), ("boxes", "scores"), {
                             "images": _IMAGES,
                             "boxes": "N x P x 4: every prediction of every head and anchor, "
                                      "x1 y1 x2 y2 in input pixels",
                             "scores": f"N x P x {self.num_classes}: objectness x class "
                                       f"probability; no threshold, no NMS (prunekit detect "
                                       f"keeps scores above --conf, then class-wise NMS)"})
        names = tuple(f"stride{s}" for s in head_strides(self.arch))
        return Graph(net, ("images",), names, {"images": _IMAGES, **{
            n: f"N x {len(h.anchors)}*{c} x H/{s} x W/{s}: raw head outputs, per anchor t_x "
               f"t_y t_w t_h, objectness logit, {self.num_classes} class logits (YOLOv3 "
               f"decoding; anchors in the metadata)"
            for n, s, h in zip(names, head_strides(self.arch), self.heads(), strict=True)}},
            {"anchors": json.dumps({n: h.anchors.tolist() for n, h in
                                    zip(names, self.heads(), strict=True)})})
