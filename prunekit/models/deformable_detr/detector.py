"""Deformable DETR behind the family interface: Hugging Face's ``DeformableDetrForObjectDetection``
wrapped so that it takes images in [0, 1] and returns raw outputs.

- **Input**: ImageNet normalisation inside the model (attacks work on [0, 1] pixels); the pixel
  mask comes from each image's geometry (the canvas an image covers), all ones without them.
- **Outputs**: every decoder layer's class logits and boxes, batch first: ``N×L×Q×C`` and
  ``N×L×Q×4`` (cx, cy, w, h as fractions of the input canvas, after HF's sigmoid), the last
  layer being HF's ``logits`` and ``pred_boxes``. The heads are applied here as HF's forward
  applies them (it returns the other layers only inside its loss).
- **Loss**: HF's Hungarian set loss (scipy's assignment; focal classification, L1 and GIoU box
  terms, auxiliary losses on every decoder layer when the config asks), in any mode.
- **Post-processing**: as HF's ``post_process_object_detection``: sigmoid, the top
  ``max_det`` of queries × classes, boxes to pixels; no NMS.
- **Tied weights**: HF shares the box (and, without box refinement, class) heads between
  decoder layers; the state dict holds each shared tensor once, under its first name, and
  loading fills the other names, so every tensor is masked, averaged and saved exactly once.
- **BatchNorm**: ``arch["batchnorm"] == "trainable"`` puts real ``nn.BatchNorm2d`` back and
  unfreezes the backbone (HF freezes it and, with random weights, its frozen BatchNorm does not
  normalise at all; its freeze filter also misses HF's own ResNet names and freezes everything);
  ``"frozen"`` keeps HF's setting, as an imported pretrained model has it.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from prunekit.models.deformable_detr import groups
from prunekit.models.deformable_detr.config import hf_config, offline
from prunekit.models.deformable_detr.transform import IMAGENET_MEAN, IMAGENET_STD, FitCanvas


class DeformableDETR(Detector):
    """Deformable DETR built from an ``arch`` (see :mod:`prunekit.models.deformable_detr.config`).
    """

    family: ClassVar[str] = "deformable-detr"
    runtimes: ClassVar[tuple[str, ...]] = ("eager", "onnxruntime")
    max_grad_norm: ClassVar[float] = 0.1  # the original recipe's gradient clipping
    # Captum's DeepLIFT rewrites gradients only at modules of a few types (ReLU, ELU,
    # LeakyReLU, Sigmoid, Tanh, Softplus, MaxPool, Softmax). Here it reaches the ResNet's and the
    # feed-forward layers' ReLU modules; everything else that is nonlinear passes plain
    # gradients: the attention weights' functional softmax, the sigmoids of the reference
    # points and boxes, LayerNorm (no rule at all), and grid_sample (exact in the sampled
    # values, a gradient in the sampling locations). Contributions then no longer add up to
    # the output difference: on deformable-detr-small the stem's contributions, which every
    # path passes through, missed 88 % (black baseline) and 180 % (blur) of it, where YOLOv3's
    # all-ReLU-like network keeps them within a few per cent.
    unsupported_scores: ClassVar[dict[str, str]] = {
        "deeplift": "DeepLIFT cannot be right for Deformable DETR: Captum passes plain "
                    "gradients through its softmax, sigmoids, LayerNorm and grid_sample "
                    "sampling locations, so contributions do not add up to the output "
                    "difference (88 % missed at the stem); score with taylor, hydra, "
                    "magnitude or l1-filter"}

    def __init__(self, arch: dict[str, Any], input_spec: dict[str, Any],
                 classes: list[str]) -> None:
        from transformers import DeformableDetrForObjectDetection

        super().__init__()
        self.arch = copy.deepcopy(arch)
        self.input_spec = dict(input_spec)
        self.classes = list(classes)
        self.config = hf_config(arch, classes)
        from prunekit.models.deformable_detr.kernel import install

        with offline():
            self.detr = install(DeformableDetrForObjectDetection(self.config))
        if arch.get("batchnorm", "trainable") == "trainable":
            _trainable_backbone(self.detr)
        self._configured = groups.configured_widths(self.detr)
        groups.resize(self.detr, arch.get("widths") or {})
        self.grey = Grey() if self.input_spec.get("colour") == "grey" else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self._transform = FitCanvas(*self.input_spec["size"])
        self._aliases = _aliases(self)
        self.register_state_dict_post_hook(_drop_aliases)
        self.register_load_state_dict_pre_hook(_fill_aliases)

    @property
    def transform(self) -> InputTransform:
        return self._transform

    # ------------------------------------------------------------------------------ forward

    def pixel_mask(self, x: Tensor, geometries: list[Geometry] | None) -> Tensor | None:
        """1 where an image covers the canvas, 0 on its padding (None: all ones)."""
        if geometries is None:
            return None
        if len(geometries) != x.shape[0]:
            raise ValueError(f"{len(geometries)} geometries for {x.shape[0]} images")
        mask = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.long, device=x.device)
        for i, g in enumerate(geometries):
            h, w = self._transform.valid(g)
            mask[i, :h, :w] = 1
        return mask

    def forward(self, x: Tensor, geometries: list[Geometry] | None = None) -> Outputs:
        return self.forward_masked(x, self.pixel_mask(x, geometries))

    def forward_masked(self, x: Tensor, pixel_mask: Tensor | None) -> Outputs:
        """:meth:`forward` with the pixel mask given (N×H×W, 1 on the image, 0 on padding;
        None: all ones)."""
        from transformers.models.deformable_detr.modeling_deformable_detr import inverse_sigmoid

        if self.grey is not None:
            x = self.grey(x)
        pixel_values = (x - self.mean) / self.std
        out = self.detr.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        hidden = out.intermediate_hidden_states
        logits, boxes = [], []
        for level in range(hidden.shape[1]):
            reference = out.init_reference_points if level == 0 else \
                out.intermediate_reference_points[:, level - 1]
            reference = inverse_sigmoid(reference)
            delta = self.detr.bbox_embed[level](hidden[:, level])
            if reference.shape[-1] == 4:
                coord = delta + reference
            else:
                coord = torch.cat((delta[..., :2] + reference, delta[..., 2:]), -1)
            logits.append(self.detr.class_embed[level](hidden[:, level]))
            boxes.append(coord.sigmoid())
        return torch.stack(logits, 1), torch.stack(boxes, 1)

    # ------------------------------------------------------------------ the family's seams

    def _labels(self, targets: list[Target], device: torch.device) -> list[dict[str, Tensor]]:
        """Targets as HF's loss takes them: class ids and cx, cy, w, h as canvas fractions."""
        h, w = self._transform.size
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        out = []
        for t in targets:
            xyxy = (t.input_boxes().float() / scale).clamp(0, 1)
            cxcywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
            out.append({"class_labels": t.labels.to(device), "boxes": cxcywh.to(device)})
        return out

    def loss(self, outputs: Outputs, targets: list[Target]) -> tuple[Tensor, dict[str, Tensor]]:
        from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss

        logits, boxes = outputs
        device = logits.device
        total, parts, _ = DeformableDetrForObjectDetectionLoss(
            logits[:, -1], self._labels(targets, device), device, boxes[:, -1], self.config,
            logits.transpose(0, 1), boxes.transpose(0, 1))
        c = self.config
        cls = sum(v for k, v in parts.items() if k.startswith("loss_ce"))
        box = sum(c.bbox_loss_coefficient * v for k, v in parts.items()
                  if k.startswith("loss_bbox")) + sum(
            c.giou_loss_coefficient * v for k, v in parts.items() if k.startswith("loss_giou"))
        return total, {"cls": cls, "box": box}

    def vanish(self, outputs: Outputs) -> Tensor:
        """−softplus(class logit), averaged over the last layer: every score driven to zero."""
        return -F.softplus(outputs[0][:, -1].float()).mean()

    def postprocess(self, outputs: Outputs, geometries: list[Geometry], *, conf: float = 0.5,
                    iou: float = 0.45, max_det: int = 100) -> list[Detections]:
        logits, boxes = outputs[0][:, -1], outputs[1][:, -1]
        h, w = self._transform.size
        scale = boxes.new_tensor([w, h, w, h])
        results = []
        for prob, box, geometry in zip(logits.sigmoid(), boxes, geometries, strict=True):
            scores, idx = prob.flatten().topk(min(max_det, prob.numel()))
            keep = scores > conf
            scores, idx = scores[keep], idx[keep]
            query, label = idx // prob.shape[1], idx % prob.shape[1]
            cxcywh = box[query].float() * scale
            xyxy = torch.cat((cxcywh[:, :2] - cxcywh[:, 2:] / 2,
                              cxcywh[:, :2] + cxcywh[:, 2:] / 2), 1)
            original = geometry.clip(geometry.to_original(xyxy.cpu()))
            results.append(Detections(original, scores.cpu().float(), label.cpu()))
        return results

    @torch.no_grad()
    def _matches(self, outputs: Outputs, targets: list[Target]) -> list[tuple[Tensor, Tensor]]:
        """HF's Hungarian assignment of queries to the targets (the first N rows)."""
        from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher

        n = len(targets)
        c = self.config
        matcher = DeformableDetrHungarianMatcher(class_cost=c.class_cost, bbox_cost=c.bbox_cost,
                                                 giou_cost=c.giou_cost)
        first = {"logits": outputs[0][:n, -1].float(), "pred_boxes": outputs[1][:n, -1].float()}
        return matcher(first, self._labels(targets, outputs[0].device))

    def evidence(self, outputs: Outputs, targets: list[Target]) -> Tensor:
        """Per image, over the queries matched to its objects (HF's Hungarian assignment on
        the real images, then fixed): the true class's logit (+1), the other classes' (−1/(C−1)
        each) and the four box outputs (+1 each), of the last decoder layer."""
        logits, boxes = outputs[0][:, -1], outputs[1][:, -1]
        n, c = len(targets), logits.shape[-1]
        w_logits = torch.zeros(n, *logits.shape[1:], device=logits.device)
        w_boxes = torch.zeros(n, *boxes.shape[1:], device=boxes.device)
        for i, (queries, objects) in enumerate(self._matches(outputs, targets)):
            for q, j in zip(queries.tolist(), objects.tolist(), strict=True):
                if c > 1:
                    w_logits[i, q] = -1.0 / (c - 1)
                w_logits[i, q, int(targets[i].labels[j])] = 1.0
                w_boxes[i, q] = 1.0
        k = logits.shape[0] // n
        return ((logits * w_logits.repeat(k, 1, 1).to(logits.dtype)).flatten(1).sum(1)
                + (boxes * w_boxes.repeat(k, 1, 1).to(boxes.dtype)).flatten(1).sum(1))

    def ideal_outputs(self, targets: list[Target]) -> Outputs:
        c, layers, queries = self.num_classes, self.config.decoder_layers, self.config.num_queries
        logits = torch.full((len(targets), layers, queries, c), -20.0)
        boxes = torch.tensor([0.5, 0.5, 0.1, 0.1]).repeat(len(targets), layers, queries, 1)
        for i, label in enumerate(self._labels(targets, torch.device("cpu"))):
            for j, (cls, box) in enumerate(zip(label["class_labels"], label["boxes"],
                                               strict=True)):
                logits[i, :, j, int(cls)] = 20.0
                boxes[i, :, j] = box
        return logits, boxes

    # ------------------------------------------------------------------------- pruning

    def prunable(self) -> list[str]:
        """Every conv and linear weight, each shared (tied) weight once."""
        seen: set[int] = set()
        names = []
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d | nn.Linear) and id(m.weight) not in seen:
                seen.add(id(m.weight))
                names.append(f"{name}.weight")
        return names

    def channel_groups(self) -> list[ChannelGroup]:
        return groups.channel_groups(self.detr, "detr.")

    def compacted_arch(self, state: dict[str, Tensor]) -> dict[str, Any]:
        arch = copy.deepcopy(self.arch)
        arch["widths"] = groups.widths(state, self._configured, "detr.")
        return arch

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The original recipe: the sampling offsets and the reference points at a tenth of the
        learning rate, and a pretrained (frozen-BatchNorm) backbone too; a backbone trained
        from scratch learns at the full rate. Weight decay on matrices and kernels only."""
        pretrained = self.arch.get("batchnorm") == "frozen"
        out: dict[tuple[bool, float], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            slow = (pretrained and ".backbone." in name) or "sampling_offsets" in name or \
                "reference_points" in name
            out.setdefault((p.ndim > 1, 0.1 if slow else 1.0), []).append(p)
        return [{"params": ps, "weight_decay": weight_decay if decay else 0.0,
                 "lr_scale": scale} for (decay, scale), ps in out.items()]

    def deployed(self, runtime: str = "eager") -> nn.Module:
        """A copy with every backbone BatchNorm folded into its convolution, ReLUs in place and,
        for PyTorch, the deformable sampling as one weighted gather or prunekit's kernel, and
        each linear layer (with the feed-forward's ReLU) one oneDNN primitive, each encoder
        residual sum normalised in one pass (:mod:`prunekit.models.deformable_detr.deploy`).
        For onnxruntime the sampling stays HF's ``grid_sample``, which it runs as one
        GridSample kernel per level: exported, the gather becomes generic Gather and ReduceSum
        nodes, 21 times slower there (deformable-detr-small, one thread: 298 ms against 14.2
        ms)."""
        from prunekit.models.deformable_detr.deploy import (
            cached_positions,
            fold_batchnorm,
            fused_norms,
            inplace_relu,
            lean_sampling,
            onednn_linears,
        )
        from prunekit.models.deformable_detr.kernel import install

        model = inplace_relu(fold_batchnorm(copy.deepcopy(self).eval()))
        if runtime == "onnxruntime":
            return install(model, kernel=False)
        return fused_norms(cached_positions(onednn_linears(lean_sampling(model))))

    def quantization(self) -> Quantization:
        """The backbone's convolutions and the transformer's matrix products in integers; the
        deformable sampling (``GridSample``) in float."""
        return Quantization(
            op_types=("Conv", "MatMul", "Gemm"),
            float_ops={"GridSample": "the deformable sampling: bilinear interpolation at "
                                     "fractional positions, which onnxruntime runs in float "
                                     "only"})

    def graph(self, *, decoded: bool = False, deployed: bool = True) -> Graph:
        net = self.deployed("onnxruntime") if deployed else copy.deepcopy(self).eval()
        c, q = self.num_classes, self.config.num_queries
        meaning = {
            "images": "N x 3 x H x W floats in [0, 1], RGB, resized to fit the input size "
                      "keeping the aspect ratio, at the top left, padded right and bottom "
                      "(ImageNet normalisation, and grey conversion for a grey model, inside)",
            "pixel_mask": "N x H x W int64: 1 where the image covers the canvas, 0 on the "
                          "padding"}
        if decoded:
            meaning.update(
                boxes=f"N x {q} x 4: one box per query, x1 y1 x2 y2 in input pixels",
                scores=f"N x {q} x {c}: sigmoid of the class logits; no threshold, no NMS "
                       f"(prunekit detect keeps the top 100 of queries x classes)")
            return Graph(_Decoded(net, self._transform.size), ("images", "pixel_mask"),
                         ("boxes", "scores"), meaning)
        meaning.update(
            logits=f"N x {q} x {c}: class logits of the last decoder layer (sigmoid, no "
                   f"background class)",
            boxes=f"N x {q} x 4: centre x, centre y, width, height as fractions of the input "
                  f"size (HF's pred_boxes)")
        return Graph(_Raw(net), ("images", "pixel_mask"), ("logits", "boxes"), meaning)

    def graph_inputs(self, batch: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Random images and pixel masks: each image covers a random top-left part of the
        canvas, at least half of each side, as images of other shapes would."""
        h, w = self._transform.size
        images = torch.rand(batch, 3, h, w, generator=generator)
        mask = torch.zeros(batch, h, w, dtype=torch.long)
        for i in range(batch):
            mh = int(torch.randint(h // 2, h + 1, (), generator=generator))
            mw = int(torch.randint(w // 2, w + 1, (), generator=generator))
            mask[i, :mh, :mw] = 1
        return images, mask

    def neutral_inputs(self, images: Tensor) -> tuple[Tensor, ...]:
        """The images and a pixel mask of ones: no padding, as ``forward`` without
        geometries."""
        n, _, h, w = images.shape
        return images, torch.ones(n, h, w, dtype=torch.long, device=images.device)

    def graph_feeds(self, x: Tensor, geometries: list[Geometry] | None = None) \
            -> tuple[Tensor, ...]:
        """The images and the pixel mask ``forward`` builds from ``geometries`` (ones without
        them)."""
        mask = self.pixel_mask(x, geometries)
        return self.neutral_inputs(x) if mask is None else (x, mask)

    def from_graph(self, outputs: Outputs) -> Outputs:
        """The graph's last-layer logits and boxes as a one-layer stack (N×1×Q×…): what
        :meth:`postprocess` reads (the last layer)."""
        logits, boxes = outputs
        return logits.unsqueeze(1), boxes.unsqueeze(1)

    def uncounted_macs(self, x: Tensor) -> tuple[int, str]:
        """Multiply–accumulates of the deformable sampling, which ``FlopCounterMode`` does not
        see (``grid_sample``): per sampled point and value channel, 4 for the bilinear
        interpolation and 1 for the attention-weighted sum."""
        from transformers.models.deformable_detr.modeling_deformable_detr import (
            MultiScaleDeformableAttention,
        )

        total = 0

        def count(module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> None:
            nonlocal total
            value = kwargs.get("value", args[0] if args else None)
            locations = kwargs.get("sampling_locations", args[4] if len(args) > 4 else None)
            head_dim = value.shape[-1]
            total += 5 * locations[..., 0].numel() * head_dim

        hooks = [m.register_forward_hook(count, with_kwargs=True) for m in self.modules()
                 if isinstance(m, MultiScaleDeformableAttention)]
        try:
            with torch.no_grad():
                self(x)
        finally:
            for h in hooks:
                h.remove()
        return total, ("deformable sampling (grid_sample: 4 per bilinear sample and channel, "
                       "+1 for the attention weighting) added by formula")


class _Raw(nn.Module):
    """images, pixel mask → the last decoder layer's logits and boxes (what HF returns)."""

    def __init__(self, net: DeformableDETR) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        logits, boxes = self.net.forward_masked(images, pixel_mask)
        return logits[:, -1], boxes[:, -1]


class _Decoded(_Raw):
    """images, pixel mask → boxes (x1 y1 x2 y2, input pixels) and class probabilities."""

    def __init__(self, net: DeformableDETR, size: tuple[int, int]) -> None:
        super().__init__(net)
        h, w = size
        self.register_buffer("scale", torch.tensor([w, h, w, h], dtype=torch.float32),
                             persistent=False)

    def forward(self, images: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        logits, boxes = super().forward(images, pixel_mask)
        cxcywh = boxes * self.scale
        xyxy = torch.cat((cxcywh[..., :2] - cxcywh[..., 2:] / 2,
                          cxcywh[..., :2] + cxcywh[..., 2:] / 2), -1)
        return xyxy, logits.sigmoid()


def _aliases(model: nn.Module) -> dict[str, str]:
    """State-dict name → the first name of the same (tied) tensor, for every later name."""
    first: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            out[name] = first[id(t)]
        else:
            first[id(t)] = name
    return out


def _drop_aliases(module: nn.Module, state: dict[str, Tensor], prefix: str,
                  local_metadata: Any) -> None:
    for alias in getattr(module, "_aliases", {}):
        state.pop(prefix + alias, None)


def _fill_aliases(module: nn.Module, state: dict[str, Tensor], prefix: str, *args: Any) -> None:
    for alias, name in getattr(module, "_aliases", {}).items():
        if prefix + alias not in state and prefix + name in state:
            state[prefix + alias] = state[prefix + name]


def _trainable_backbone(detr: nn.Module) -> None:
    """Real BatchNorm (copying the frozen statistics) and every backbone parameter trainable."""
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrFrozenBatchNorm2d,
    )

    backbone = detr.model.backbone.model
    for parent in list(backbone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DeformableDetrFrozenBatchNorm2d):
                bn = nn.BatchNorm2d(child.weight.shape[0], device=child.weight.device)
                with torch.no_grad():
                    for key in ("weight", "bias", "running_mean", "running_var"):
                        getattr(bn, key).copy_(getattr(child, key))
                setattr(parent, name, bn)
    for p in backbone.parameters():
        p.requires_grad_(True)
