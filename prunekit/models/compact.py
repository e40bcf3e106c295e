"""Physical compaction over channel groups, for every family alike.

A family describes its channel spaces as :class:`~prunekit.models.base.ChannelGroup`\\ s: the
parameters that make each channel (producers), the buffers along it (statistics) and the
weights that read it (consumers), each as a tensor name, a dimension and an offset. A channel
whose producers are all exactly zero outputs exactly zero (a zero conv filter and a zero
BatchNorm scale and shift give 0, and LeakyReLU, ReLU and GELU keep 0 at 0), so removing it,
together with the consumer columns that read it, leaves the function unchanged. Compaction is
therefore nothing but index selection on state-dict tensors (conv and linear weights, biases,
BatchNorm, GroupNorm and LayerNorm parameters and buffers, whatever the group names), after
which the family writes the new widths into its ``arch``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prunekit.models.base import ChannelGroup, Detector


def alive(group: ChannelGroup, state: dict[str, Tensor]) -> Tensor:
    """Which of a group's channels stay: those with a non-zero producer entry; all of them when
    the group may not be pruned; at least one."""
    live = torch.zeros(group.size, dtype=torch.bool)
    if not group.prunable:
        return ~live
    for s in group.producers:
        part = state[s.name].narrow(s.dim, s.offset, group.size)
        live |= (part != 0).movedim(s.dim, 0).reshape(group.size, -1).any(1).cpu()
    if not live.any():
        live[0] = True  # a layer keeps at least one channel
    return live


def compact(model: Detector, state: dict[str, Tensor], masks: dict[str, Tensor] | None = None,
            ) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """Remove every channel whose producers are all zero, and the weights that read it.

    Args:
        model: the model (a skeleton is enough): its channel groups and ``arch``.
        state: its masked state dict.
        masks: masks to carry over, sliced like their tensors (all-True masks are dropped).

    Returns:
        The new arch (widths updated by the family), state dict and masks.
    """
    keep: dict[tuple[str, int], Tensor] = {}
    for group in model.channel_groups():
        live = alive(group, state)
        if live.all():
            continue
        for s in (*group.producers, *group.statistics, *group.consumers):
            length = state[s.name].shape[s.dim]
            span = keep.setdefault((s.name, s.dim), torch.ones(length, dtype=torch.bool))
            span[s.offset:s.offset + group.size] = live
    new_state = dict(state)
    new_masks = dict(masks or {})
    for (name, dim), span in keep.items():
        index = span.nonzero().flatten()
        new_state[name] = new_state[name].index_select(dim, index).contiguous()
        if name in new_masks:
            new_masks[name] = new_masks[name].index_select(dim, index).contiguous()
    new_masks = {k: m for k, m in new_masks.items() if not m.all()}
    return model.compacted_arch(new_state), new_state, new_masks
