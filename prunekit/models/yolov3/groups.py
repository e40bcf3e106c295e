"""Channel groups of the YOLOv3 family: which filters are coupled, and what reads them.

Why not Torch-Pruning's dependency graph: the family's layer list already *is* the dependency
graph. Every tensor's channels come from a conv (new channels), an addition (``shortcut``: both
operands' channels are the same channels, so their filters are coupled), a concatenation
(``route``: channels side by side, not coupled) or a channel-preserving op (upsample, maxpool).
Walking the list once gives exact groups (and, through the generic compaction of
:mod:`prunekit.models.compact`, an exact compaction) for the built-in members and for any
Darknet ``.cfg``, and the new widths go back into ``arch`` where the checkpoint needs them.
Torch-Pruning would trace the module instead, and its YOLO examples are known to break on
concatenations; nothing it adds is needed here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from prunekit.errors import PrunekitError
from prunekit.models.base import ChannelGroup, Slice
from prunekit.models.yolov3.arch import head_conv_indices


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


def channel_groups(arch: dict[str, Any]) -> list[ChannelGroup]:
    """The family interface's channel groups: one per filter group, its conv weights, biases and
    BatchNorm parameters as producers, the running statistics, and every conv that reads the
    group's channels (after concatenations, at the channels' offset) as a consumer."""
    layers = arch["layers"]
    spans = _sources(arch)
    out = []
    for g in filter_groups(arch):
        producers, statistics, consumers = [], [], []
        for i in g.layers:
            producers.append(Slice(f"layers.{i}.conv.weight", 0))
            if layers[i].get("bn", True):
                producers += [Slice(f"layers.{i}.bn.weight", 0), Slice(f"layers.{i}.bn.bias", 0)]
                statistics += [Slice(f"layers.{i}.bn.running_mean", 0),
                               Slice(f"layers.{i}.bn.running_var", 0)]
            else:
                producers.append(Slice(f"layers.{i}.conv.bias", 0))
        for j, spec in enumerate(layers):
            if spec["type"] != "conv" or j == 0:
                continue
            offset = 0
            for src, width in spans[j - 1]:
                if src in g.layers:
                    consumers.append(Slice(f"layers.{j}.conv.weight", 1, offset))
                offset += width
        out.append(ChannelGroup(f"conv {', '.join(map(str, g.layers))}", g.size,
                                tuple(producers), tuple(statistics), tuple(consumers),
                                scored=tuple(f"layers.{i}.conv.weight" for i in g.layers),
                                prunable=g.prunable))
    return out


def compacted_arch(arch: dict[str, Any], state: dict[str, Tensor]) -> dict[str, Any]:
    """``arch`` with every conv's ``filters`` read from its weight in ``state``."""
    new = copy.deepcopy(arch)
    for i, spec in enumerate(new["layers"]):
        if spec["type"] == "conv":
            spec["filters"] = int(state[f"layers.{i}.conv.weight"].shape[0])
    return new
