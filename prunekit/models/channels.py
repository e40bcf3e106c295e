"""Channel bookkeeping of the YOLOv3 family: which filters are coupled, and physical compaction.

Why not Torch-Pruning's dependency graph: the family's layer list already *is* the dependency
graph. Every tensor's channels come from a conv (new channels), an addition (``shortcut``: both
operands' channels are the same channels, so their filters are coupled), a concatenation
(``route``: channels side by side, not coupled) or a channel-preserving op (upsample, maxpool).
Walking the list once gives exact groups and an exact compaction, for the built-in members and
for any Darknet ``.cfg``, and it keeps the new widths in ``arch`` where the checkpoint needs them.
Torch-Pruning would trace the module instead, and its YOLO examples are known to break on
concatenations; nothing it adds is needed here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prunekit.errors import PrunekitError
from prunekit.models.yolov3 import head_conv_indices


@dataclass(frozen=True)
class FilterGroup:
    """Conv layers whose output filters are kept or removed together (index by index)."""

    layers: tuple[int, ...]
    size: int
    prunable: bool  # False when a member feeds a detection head directly


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _sources(arch: dict[str, Any]) -> list[list[tuple[int, int]]]:
    """For each layer's output, its channels as (conv layer, filter offset) spans:
    ``[(conv index, width), ...]`` concatenated in order."""
    layers = arch["layers"]
    spans: list[list[tuple[int, int]]] = []
    for i, spec in enumerate(layers):
        t = spec["type"]
        if t == "conv":
            spans.append([(i, spec["filters"])])
        elif t == "shortcut":
            spans.append(spans[i - 1])
        elif t == "route":
            spans.append([s for j in spec["layers"] for s in spans[j]])
        elif t == "yolo":
            spans.append([])
        else:  # upsample, maxpool
            spans.append(spans[i - 1])
    return spans


def filter_groups(arch: dict[str, Any]) -> list[FilterGroup]:
    """The coupled filter groups of an architecture, one per independent channel space.

    Conv layers joined by residual additions share their output channels; every other conv is
    a group of its own. A group that contains a head conv is not prunable.
    """
    layers = arch["layers"]
    spans = _sources(arch)
    uf = _UnionFind()
    for i, spec in enumerate(layers):
        if spec["type"] == "conv":
            uf.find(i)
        elif spec["type"] == "shortcut":
            a, b = spans[i - 1], spans[spec["from"]]
            # An addition of concatenations couples span by span.
            if (len(a) != 1 or len(b) != 1) and [w for _, w in a] != [w for _, w in b]:
                raise PrunekitError(f"layer {i}: shortcut operands are concatenated "
                                    f"differently; prunekit cannot couple their channels")
            for (la, _), (lb, _) in zip(a, b, strict=True):
                uf.union(la, lb)
    heads = set(head_conv_indices(arch))
    members: dict[int, list[int]] = {}
    for i, spec in enumerate(layers):
        if spec["type"] == "conv":
            members.setdefault(uf.find(i), []).append(i)
    groups = []
    for idx in sorted(members.values(), key=lambda m: m[0]):
        widths = {layers[i]["filters"] for i in idx}
        if len(widths) != 1:
            raise PrunekitError(f"layers {idx} are added together but have widths {widths}")
        groups.append(FilterGroup(tuple(idx), widths.pop(), not heads.intersection(idx)))
    return groups


def kept_filters(arch: dict[str, Any], state: dict[str, Tensor]) -> dict[int, Tensor]:
    """For each conv layer, the indices of filters that are not entirely zero (weights, and
    BatchNorm scale and shift or conv bias). Coupled layers keep the union of their members'
    filters, so an addition never loses a channel one of its operands still carries."""
    alive: dict[int, Tensor] = {}
    for i, spec in enumerate(arch["layers"]):
        if spec["type"] != "conv":
            continue
        w = state[f"layers.{i}.conv.weight"]
        live = (w != 0).flatten(1).any(1)
        if spec.get("bn", True):
            live |= (state[f"layers.{i}.bn.weight"] != 0) | (state[f"layers.{i}.bn.bias"] != 0)
        else:
            live |= state[f"layers.{i}.conv.bias"] != 0
        alive[i] = live
    for group in filter_groups(arch):
        union = torch.zeros(group.size, dtype=torch.bool)
        for i in group.layers:
            union |= alive[i]
        if not group.prunable:
            union[:] = True
        if not union.any():
            union[0] = True  # a layer keeps at least one filter
        for i in group.layers:
            alive[i] = union
    return {i: a.nonzero().flatten() for i, a in alive.items()}


def compact(arch: dict[str, Any], state: dict[str, Tensor],
            masks: dict[str, Tensor] | None = None) \
        -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """Physically remove filters that are entirely zero, and the input channels that read them.

    The result computes the same function as the masked model (a removed filter's output is
    exactly zero after BatchNorm and LeakyReLU, so the weights that read it contribute nothing).

    Args:
        arch: the architecture.
        state: the masked model's state dict.
        masks: masks to carry over (sliced like their tensors; all-True masks are dropped).

    Returns:
        The new arch (conv ``filters`` updated), state dict and masks.
    """
    keep = kept_filters(arch, state)
    spans = _sources(arch)
    new_arch = copy.deepcopy(arch)
    new_state = dict(state)
    new_masks: dict[str, Tensor] = {}
    masks = masks or {}
    for i, spec in enumerate(arch["layers"]):
        if spec["type"] != "conv":
            continue
        out_idx = keep[i]
        if i == 0:
            in_idx = None
        else:
            pieces, offset = [], 0
            for src, width in spans[i - 1]:
                pieces.append(keep[src] + offset)
                offset += width
            in_idx = torch.cat(pieces)
        new_arch["layers"][i]["filters"] = int(len(out_idx))
        prefix = f"layers.{i}."
        for key in [k for k in state if k.startswith(prefix)]:
            t = state[key]
            if key.endswith("num_batches_tracked"):
                continue
            sliced = t.index_select(0, out_idx) if t.ndim >= 1 else t
            if key.endswith("conv.weight") and in_idx is not None:
                sliced = sliced.index_select(1, in_idx)
            new_state[key] = sliced.contiguous()
            if key in masks:
                m = masks[key].index_select(0, out_idx) if masks[key].ndim >= 1 else masks[key]
                if key.endswith("conv.weight") and in_idx is not None:
                    m = m.index_select(1, in_idx)
                if not m.all():
                    new_masks[key] = m.contiguous()
    return new_arch, new_state, new_masks
