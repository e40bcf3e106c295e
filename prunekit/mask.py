"""Masks from scores: which weights, kernels or filters to remove, and applying them.

Semantics (the usual complaint about pruning tools is that nobody can say what "50 %" means):

* ``ratio`` is the fraction of units removed: weights (``weight``), k×k kernels (``kernel``) or
  output filters (``filter``); ``scope="layer"`` removes ``round(ratio · n)`` units in every
  prunable layer (every conv and linear weight), ``scope="global"`` removes that fraction of all
  units together, by one score threshold.
* A unit's score is the mean of its weights' scores (a kernel's or a filter's mean).
* Filters: a detection head's output channels are never removed; filters coupled by residual
  additions (:func:`prunekit.models.channels.filter_groups`) are scored by their mean and kept
  or removed together; a removed filter takes its BatchNorm scale and shift with it (masked too),
  so its output is exactly zero; every layer keeps at least one filter.
* A new mask is combined with the checkpoint's earlier one (AND): units already removed are
  ranked first, so the result removes ``ratio`` of the layer, earlier removals included, or more
  when the earlier mask had removed more.
* The output carries masks (applied: masked weights are exactly zero) and no scores; making the
  pruning physical is the separate step :func:`compact`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.models.channels import compact as compact_tensors
from prunekit.models.channels import filter_groups

GRANULARITIES = ("weight", "kernel", "filter")
SCOPES = ("layer", "global")


def prunable(state: dict[str, Tensor]) -> list[str]:
    """State-dict names of prunable weights: conv and linear weights, in model (layer)
    order."""
    return [k for k, v in state.items() if k.endswith(".weight") and v.ndim in (2, 4)]


def _removed_count(ratio: float, n: int, keep_one: bool) -> int:
    r = int(round(ratio * n))
    return min(r, n - 1) if keep_one else min(r, n)


def _lowest(scores: Tensor, count: int) -> Tensor:
    """Boolean mask of the ``count`` lowest scores (a selection, not a full sort)."""
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    if count > 0:
        out[torch.topk(scores.flatten(), count, largest=False, sorted=False).indices] = True
    return out.view(scores.shape)


def _unit_scores(score: Tensor, granularity: str) -> Tensor:
    if granularity == "weight":
        return score
    if granularity == "kernel":
        return score.flatten(2).mean(2) if score.ndim == 4 else score
    return score.flatten(1).mean(1)


def _expand(unit_mask: Tensor, shape: torch.Size) -> Tensor:
    while unit_mask.ndim < len(shape):
        unit_mask = unit_mask.unsqueeze(-1)
    return unit_mask.expand(shape).clone()


def make_masks(ck: Checkpoint, ratio: float, *, granularity: str = "weight",
               scope: str = "layer") -> dict[str, Tensor]:
    """Keep-masks (True = kept) at ``ratio``, combined with the checkpoint's earlier masks.

    Args:
        ck: a checkpoint with ``scores`` for every prunable weight.
        ratio: fraction of units removed, in [0, 1).
        granularity: ``weight``, ``kernel`` or ``filter``.
        scope: ``layer`` (the same ratio in every layer) or ``global``.
    """
    if granularity not in GRANULARITIES:
        raise PrunekitError(f"--granularity {granularity!r} is unknown; use weight, kernel or "
                            f"filter")
    if scope not in SCOPES:
        raise PrunekitError(f"--scope {scope!r} is unknown; use layer or global")
    if not 0 <= ratio < 1:
        raise PrunekitError(f"--ratio must lie in [0, 1) (the fraction removed), got {ratio}")
    names = prunable(ck.state)
    missing = [n for n in names if n not in ck.scores]
    if missing:
        raise PrunekitError(f"{ck.name} has no scores for {missing[0]!r}; run `prunekit score` "
                            f"on this checkpoint first")
    for n in names:
        if ck.scores[n].shape != ck.state[n].shape:
            raise PrunekitError(f"{ck.name}: scores for {n!r} have shape "
                                f"{list(ck.scores[n].shape)}, the weight {list(ck.state[n].shape)}"
                                f"; score this checkpoint again")
    scores = {}
    for n in names:
        s = ck.scores[n].float()
        if not torch.isfinite(s).all():
            raise PrunekitError(f"{ck.name}: scores for {n!r} are not finite; score again")
        scores[n] = s
    if granularity == "filter":
        new = _filter_masks(ck, scores, ratio, scope)
    else:
        new = _unit_masks(scores, ck.masks, ratio, granularity, scope)
    combined = dict(ck.masks)
    for n, m in new.items():
        combined[n] = m & ck.masks[n] if n in ck.masks else m
    return combined


def _earlier(unit: Tensor, old: Tensor | None, granularity: str) -> Tensor:
    """Units an earlier mask removed entirely rank first (score -inf)."""
    if old is None:
        return unit
    gone = ~_unit_scores(old.float(), granularity).bool() if granularity != "weight" else ~old
    return unit.masked_fill(gone, float("-inf"))


def _unit_masks(scores: dict[str, Tensor], old: dict[str, Tensor], ratio: float,
                granularity: str, scope: str) -> dict[str, Tensor]:
    units = {n: _earlier(_unit_scores(s, granularity), old.get(n), granularity)
             for n, s in scores.items()}
    removed: dict[str, Tensor] = {}
    if scope == "layer":
        for n, u in units.items():
            removed[n] = _lowest(u, _removed_count(ratio, u.numel(), keep_one=True))
    else:
        flat = torch.cat([u.flatten() for u in units.values()])
        low = _lowest(flat, _removed_count(ratio, flat.numel(), keep_one=True))
        offset = 0
        for n, u in units.items():
            removed[n] = low[offset:offset + u.numel()].view(u.shape)
            offset += u.numel()
            if removed[n].all():  # every layer keeps something
                removed[n].view(-1)[u.flatten().argmax()] = False
    return {n: _expand(~removed[n], scores[n].shape) for n in scores}


def _filter_masks(ck: Checkpoint, scores: dict[str, Tensor], ratio: float,
                  scope: str) -> dict[str, Tensor]:
    groups = [g for g in filter_groups(ck.arch) if g.prunable]
    group_scores = []
    for g in groups:
        names = [f"layers.{i}.conv.weight" for i in g.layers]
        per_layer = [_earlier(_unit_scores(scores[n], "filter"), ck.masks.get(n), "filter")
                     for n in names]
        group_scores.append(torch.stack(per_layer).mean(0))
    removed: list[Tensor] = []
    if scope == "layer":
        for s in group_scores:
            removed.append(_lowest(s, _removed_count(ratio, s.numel(), keep_one=True)))
    else:
        flat = torch.cat(group_scores)
        low = _lowest(flat, _removed_count(ratio, flat.numel(), keep_one=True))
        offset = 0
        for s in group_scores:
            r = low[offset:offset + s.numel()].clone()
            offset += s.numel()
            if r.all():
                r[s.argmax()] = False
            removed.append(r)
    masks: dict[str, Tensor] = {}
    for g, r in zip(groups, removed, strict=True):
        keep = ~r
        for i in g.layers:
            w = f"layers.{i}.conv.weight"
            masks[w] = _expand(keep, ck.state[w].shape)
            for extra in (f"layers.{i}.bn.weight", f"layers.{i}.bn.bias",
                          f"layers.{i}.conv.bias"):
                if extra in ck.state:
                    masks[extra] = keep.clone()
    return masks


def apply(state: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state`` with masked entries set to exactly +0.0."""
    out = dict(state)
    for n, m in masks.items():
        out[n] = state[n].masked_fill(~m, 0.0)
    return out


def mask(ck: Checkpoint, ratio: float, *, granularity: str = "weight", scope: str = "layer",
         compact: bool = False) -> Checkpoint:
    """Prune a scored checkpoint: masks at ``ratio``, applied; optionally compacted.

    Args:
        ck: a checkpoint with scores.
        ratio: fraction of units removed.
        granularity: ``weight``, ``kernel`` or ``filter``.
        scope: ``layer`` or ``global``.
        compact: physically remove the filters that are entirely zero (see :func:`compact`).

    Returns:
        The pruned checkpoint: masks, no scores.
    """
    masks = make_masks(ck, ratio, granularity=granularity, scope=scope)
    out = copy.copy(ck)
    out.state = apply(ck.state, masks)
    out.masks = masks
    out.scores = {}
    out.history = list(ck.history)
    summary = sparsity_summary(out)
    out.add_history("mask", {"ratio": ratio, "granularity": granularity, "scope": scope,
                             "compact": compact, **summary})
    return compact_checkpoint(out) if compact else out


def compact_checkpoint(ck: Checkpoint) -> Checkpoint:
    """Physically remove zero filters and the input channels that read them; the new widths go
    into ``arch``. The compacted model computes what the masked one does, faster."""
    arch, state, masks = compact_tensors(ck.arch, ck.state, ck.masks)
    out = copy.copy(ck)
    out.arch, out.state, out.masks = arch, state, masks
    out.history = list(ck.history)
    before = sum(v.numel() for k, v in ck.state.items() if k in prunable(ck.state))
    after = sum(v.numel() for k, v in state.items() if k in prunable(state))
    out.add_history("compact", {"prunable_weights_before": before, "prunable_weights_after":
                                after})
    return out


def sparsity_summary(ck: Checkpoint) -> dict[str, Any]:
    names = prunable(ck.state)
    total = sum(ck.state[n].numel() for n in names)
    zero = sum(int((ck.state[n] == 0).sum()) for n in names)
    return {"prunable_weights": total, "zeroed": zero, "sparsity": zero / total if total else 0}
