"""RetinaNet behind prunekit's family interface, composed from torchvision's parts.

torchvision's ``RetinaNet`` returns losses in train mode and detections in eval mode, and
resizes and normalises inside; prunekit asks for raw outputs in every mode and the loss apart
(so attacks and scores get a loss in eval mode), with the input transform outside the model.
So the module here holds the same parts under the same names (``backbone``: a ResNet of
``BasicBlock``\\ s with a feature pyramid, ``head``: torchvision's ``RetinaNetHead``) and does
what ``RetinaNet.forward`` does in pieces: :meth:`forward` (raw outputs), :meth:`loss`
(torchvision's matcher and ``head.compute_loss``), :meth:`postprocess` (torchvision's box
coder and batched NMS). Its state dict has torchvision's key names.

What it does not define, and so gets prunekit's defaults: ``evidence`` (DeepLIFT is refused),
``graph`` (ONNX export writes the raw outputs), ``deployed`` (the model as it is).
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops import batched_nms, box_iou
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from prunekit.models import (
    ChannelGroup,
    Detections,
    Detector,
    Geometry,
    Grey,
    InputTransform,
    Outputs,
    Slice,
    Target,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("classification_head", "regression_head")
HEAD_CONVS = 4  # torchvision's RetinaNetHead: four 3×3 convolutions before each output


class FitSquare(InputTransform):
    """Scale to fit a ``size`` × ``size`` square keeping the aspect ratio, pad right and bottom
    (with ImageNet's mean colour, zero after normalisation)."""

    def __init__(self, size: int) -> None:
        self.size = (size, size)

    def _fit(self, width: int, height: int) -> tuple[float, int, int]:
        scale = min(self.size[1] / width, self.size[0] / height)
        return scale, min(self.size[1], round(width * scale)), min(self.size[0],
                                                                   round(height * scale))

    def geometry(self, width: int, height: int) -> Geometry:
        return Geometry(width, height, self._fit(width, height)[0])

    def __call__(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        _, new_w, new_h = self._fit(w, h)
        if (new_h, new_w) != (h, w):
            images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", antialias=True,
                                   align_corners=False)
        if (new_h, new_w) != self.size:
            mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device)
            canvas = mean.view(1, 3, 1, 1).expand(*images.shape[:-2], *self.size).clone()
            canvas[..., :new_h, :new_w] = images
            images = canvas
        return images


class RetinaNetDetector(Detector):
    """RetinaNet built from an ``arch`` (see :mod:`prunekit_retinanet.family`)."""

    family: ClassVar[str] = "retinanet"
    runtimes: ClassVar[tuple[str, ...]] = ("eager", "onnxruntime")

    def __init__(self, arch: dict[str, Any], input_spec: dict[str, Any],
                 classes: list[str]) -> None:
        super().__init__()
        self.arch = copy.deepcopy(arch)
        self.input_spec = dict(input_spec)
        self.classes = list(classes)
        stages = arch["blocks"]
        body = ResNet(BasicBlock, [*stages, *[1] * (4 - len(stages))])
        returned = list(range(2, len(stages) + 1))  # stages 2.. feed the pyramid
        self.backbone = BackboneWithFPN(
            body, {f"layer{s}": str(k) for k, s in enumerate(returned)},
            [64 * 2 ** (s - 1) for s in returned], arch["fpn_channels"],
            extra_blocks=LastLevelMaxPool())
        sizes = [tuple(s) for s in arch["anchor_sizes"]]
        self.anchor_generator = AnchorGenerator(sizes, (tuple(arch["aspect_ratios"]),) * len(sizes))
        self.head = RetinaNetHead(arch["fpn_channels"],
                                  self.anchor_generator.num_anchors_per_location()[0],
                                  len(self.classes))
        self.strides = [2 ** (s + 1) for s in returned] + [2 ** (returned[-1] + 2)]
        _resize(self, arch.get("widths") or {})
        for prefix in arch.get("frozen", []):  # imported weights: the frozen stem (import)
            for name, p in self.named_parameters():
                if name.startswith(prefix + "."):
                    p.requires_grad_(False)
        self.grey = Grey() if self.input_spec.get("colour") == "grey" else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self._transform = FitSquare(self.input_spec["size"])
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)

    @property
    def transform(self) -> InputTransform:
        return self._transform

    def forward(self, x: Tensor, geometries: list[Geometry] | None = None) -> Outputs:
        # The padding is plain image content (the mean colour): geometries are not needed.
        if self.grey is not None:
            x = self.grey(x)
        features = list(self.backbone((x - self.mean) / self.std).values())
        out = self.head(features)
        return out["cls_logits"], out["bbox_regression"]

    def anchors(self, device: torch.device) -> Tensor:
        """Every anchor (x1 y1 x2 y2, input pixels), in the order of the outputs' rows."""
        size = self.input_spec["size"]
        # Each stride-2 layer of the ResNet and the pyramid's pooling halves a side, rounding
        # up; the generator only reads the feature maps' shapes.
        maps = [torch.empty(1, 0, math.ceil(size / s), math.ceil(size / s), device=device)
                for s in self.strides]
        images = ImageList(torch.empty(1, 3, size, size, device=device), [(size, size)])
        return self.anchor_generator(images, maps)[0]

    def loss(self, outputs: Outputs, targets: list[Target]) -> tuple[Tensor, dict[str, Tensor]]:
        """torchvision's RetinaNet loss (focal classification, L1 box regression; each a mean
        over images), in any mode."""
        cls, reg = outputs
        anchors = self.anchors(cls.device)
        boxes = [t.input_boxes().to(cls.device, torch.float32) for t in targets]
        matched = [self.matcher(box_iou(b, anchors)) if b.numel() else
                   torch.full((len(anchors),), -1, dtype=torch.int64, device=cls.device)
                   for b in boxes]
        found = self.head.compute_loss(
            [{"boxes": b, "labels": t.labels.to(cls.device)} for b, t in zip(boxes, targets,
                                                                               strict=True)],
            {"cls_logits": cls.float(), "bbox_regression": reg.float()},
            [anchors] * len(targets), matched)
        parts = {"cls": found["classification"], "box": found["bbox_regression"]}
        return parts["cls"] + parts["box"], parts

    def vanish(self, outputs: Outputs) -> Tensor:
        """−softplus(class logit), averaged: every class probability driven to zero."""
        return -F.softplus(outputs[0].float()).mean()

    def postprocess(self, outputs: Outputs, geometries: list[Geometry], *, conf: float = 0.5,
                    iou: float = 0.5, max_det: int = 100) -> list[Detections]:
        cls, reg = outputs
        anchors = self.anchors(cls.device)
        c = cls.shape[-1]
        found = []
        for logits, deltas, geometry in zip(cls, reg, geometries, strict=True):
            scores = torch.sigmoid(logits.float()).flatten()
            keep = (scores > conf).nonzero().flatten()
            keep = keep[scores[keep].topk(min(1000, len(keep))).indices]
            rows, labels = keep // c, keep % c
            boxes = self.box_coder.decode_single(deltas[rows].float(), anchors[rows])
            boxes = geometry.clip(geometry.to_original(boxes))
            best = batched_nms(boxes, scores[keep], labels, iou)[:max_det]
            found.append(Detections(boxes[best], scores[keep][best], labels[best]))
        return found

    def ideal_outputs(self, targets: list[Target]) -> Outputs:
        anchors = self.anchors(torch.device("cpu"))
        logits = torch.full((len(targets), len(anchors), self.num_classes), -20.0)
        deltas = torch.zeros(len(targets), len(anchors), 4)
        for i, t in enumerate(targets):
            boxes = t.input_boxes().float()
            if not len(boxes):
                continue
            best = box_iou(boxes, anchors).argmax(1)
            logits[i, best, t.labels] = 20.0
            deltas[i, best] = self.box_coder.encode_single(boxes, anchors[best])
        return logits, deltas

    # ------------------------------------------------------------------------- pruning

    def channel_groups(self) -> list[ChannelGroup]:
        """The prunable channel spaces: each ResNet block's inner channels (its first conv's
        filters, read only by its second conv) and the channels between the head's convs.
        The residual streams, the pyramid's channels (added across levels, and read by the
        head at every level) and the outputs stay."""
        return [g for g, _ in _groups(self)]

    def compacted_arch(self, state: dict[str, Tensor]) -> dict[str, Any]:
        arch = copy.deepcopy(self.arch)
        widths = dict(arch.get("widths") or {})
        for group, weight in _groups(self):
            widths[group.name] = int(state[weight].shape[0])
        arch["widths"] = {k: v for k, v in widths.items() if v != _configured(self.arch, k)}
        return arch


def _groups(model: RetinaNetDetector) -> list[tuple[ChannelGroup, str]]:
    """Every prunable group, with the weight whose filters are its channels."""
    found = []
    body = model.backbone.body
    for name, stage in body.named_children():
        if not name.startswith("layer"):
            continue
        for i, block in enumerate(stage):
            p = f"backbone.body.{name}.{i}"
            w = f"{p}.conv1.weight"
            found.append((ChannelGroup(
                p, block.conv1.out_channels,
                producers=(Slice(w, 0), Slice(f"{p}.bn1.weight", 0), Slice(f"{p}.bn1.bias", 0)),
                statistics=(Slice(f"{p}.bn1.running_mean", 0),
                            Slice(f"{p}.bn1.running_var", 0)),
                consumers=(Slice(f"{p}.conv2.weight", 1),), scored=(w,)), w))
    for head in HEADS:
        last = "cls_logits" if head == "classification_head" else "bbox_reg"
        for i in range(HEAD_CONVS):
            p = f"head.{head}.conv.{i}"
            w = f"{p}.0.weight"
            reader = f"head.{head}.conv.{i + 1}.0.weight" if i + 1 < HEAD_CONVS else \
                f"head.{head}.{last}.weight"
            conv = getattr(model.head, head).conv[i][0]
            found.append((ChannelGroup(p, conv.out_channels,
                                       producers=(Slice(w, 0), Slice(f"{p}.0.bias", 0)),
                                       consumers=(Slice(reader, 1),), scored=(w,)), w))
    return found


def _configured(arch: dict[str, Any], group: str) -> int:
    """A group's width as the member builds it."""
    if group.startswith("head."):
        return arch["fpn_channels"]
    stage = int(group.split(".")[2][len("layer"):])
    return 64 * 2 ** (stage - 1)


def _conv(conv: nn.Conv2d, *, ins: int | None = None, outs: int | None = None) -> nn.Conv2d:
    """``conv`` with other channel counts (fresh weights: the state loads next)."""
    return nn.Conv2d(ins or conv.in_channels, outs or conv.out_channels, conv.kernel_size,
                     conv.stride, conv.padding, bias=conv.bias is not None)


def _resize(model: RetinaNetDetector, widths: dict[str, int]) -> None:
    """Rebuild the layers of the groups a compacted model records at their widths."""
    for name, width in widths.items():
        parts = name.split(".")
        if parts[0] == "backbone":
            block = getattr(model.backbone.body, parts[2])[int(parts[3])]
            block.conv1 = _conv(block.conv1, outs=width)
            block.bn1 = nn.BatchNorm2d(width)
            block.conv2 = _conv(block.conv2, ins=width)
        else:
            head = getattr(model.head, parts[1])
            i = int(parts[3])
            head.conv[i][0] = _conv(head.conv[i][0], outs=width)
            if i + 1 < HEAD_CONVS:
                head.conv[i + 1][0] = _conv(head.conv[i + 1][0], ins=width)
            else:
                last = "cls_logits" if parts[1] == "classification_head" else "bbox_reg"
                setattr(head, last, _conv(getattr(head, last), ins=width))
