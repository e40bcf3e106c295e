"""Masks from scores: which weights, kernels or filters to remove, and applying them.

Semantics (the usual complaint about pruning tools is that nobody can say what "50 %" means):

* ``ratio`` is the fraction of units removed: weights (``weight``), k×k kernels (``kernel``) or
  output filters (``filter``); ``scope="layer"`` removes ``round(ratio · n)`` units in every
  prunable layer (the family's prunable weights), ``scope="global"`` removes that fraction of
  all units together, by one score threshold.
* A unit's score is the mean of its weights' scores (a kernel's or a filter's mean).
* Filters are the channels of the family's channel groups
  (:meth:`~prunekit.models.base.Detector.channel_groups`): the channels a group may not lose
  (detection outputs, residual streams a family keeps) are never removed; channels coupled by
  residual additions are scored by their mean and kept or removed together; a removed channel
  takes every parameter that makes it with it (BatchNorm scale and shift, biases: masked too),
  so its output is exactly zero; every group keeps at least one channel.
* A new mask is combined with the checkpoint's earlier one (AND): units already removed are
  ranked first, so the result removes ``ratio`` of the layer, earlier removals included, or more
  when the earlier mask had removed more.
* The output carries masks (applied: masked weights are exactly zero) and no scores; making the
  pruning physical is the separate step :func:`compact_checkpoint`.
* Per-set ratios (``PruneConfig.ratios``, ``scope="layer"``): each set of units (a prunable
  weight, or a channel group for filters; :attr:`Units.labels` names them) may get its own
  ratio, e.g. the ratios ``mask --ratios-from`` allocates from a sensitivity analysis, or one
  group alone (``prunekit sensitivity``); the sets not named get ``ratio``.

:class:`Units` is the one ranking of units into keep-masks, shared with HYDRA's differentiable
masks (:mod:`prunekit.hydra`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.models.base import Detector
from prunekit.models.compact import compact

GRANULARITIES = ("weight", "kernel", "filter")
SCOPES = ("layer", "global")
# keep_top(scores, k) → keep-mask of the k units to keep (bool, or float for HYDRA).
KeepTop = Callable[[Tensor, int], Tensor]


def check_granularity(granularity: str, scope: str) -> None:
    if granularity not in GRANULARITIES:
        raise PrunekitError(f"--granularity {granularity!r} is unknown; use weight, kernel or "
                            f"filter")
    if scope not in SCOPES:
        raise PrunekitError(f"--scope {scope!r} is unknown; use layer or global")


@dataclass(frozen=True)
class PruneConfig:
    """What to prune, one value wherever pruning settings travel: ``prunekit mask``'s flags,
    HYDRA's target (its ratio, granularity and scope), a grid cell's pruning; recorded whole in
    the output's history.

    Attributes:
        ratio: fraction of units removed, in [0, 1).
        granularity: ``weight``, ``kernel`` or ``filter``.
        scope: ``layer`` (the same ratio in every layer) or ``global``.
        compact: physically remove the pruned filters (:func:`compact_checkpoint`).
        ratios: a ratio per set of units, by name (:attr:`Units.labels`: a weight's name, or a
            channel group's for filters), for ``scope="layer"``; the sets not named get
            ``ratio``.
        schedule: pruning while training (``finetune --prune-to``): ``one-shot``, ``linear``
            or ``cubic``, with ``ratio`` the final sparsity (:class:`prunekit.schedule.Schedule`);
            None: pruned once, here.
        start: the schedule's first update (optimiser step; ``--prune-start``).
        end: its last update, where the sparsity reaches ``ratio`` (``--prune-end``).
        every: steps between updates (``--prune-every``).
        round_to: filters: every channel group keeps a multiple of this many channels (its
            next best ones, never more than it has): the widths CPU kernels vectorise best,
            for a few more MACs. 1: no rounding.
    """

    ratio: float
    granularity: str = "weight"
    scope: str = "layer"
    compact: bool = False
    ratios: Mapping[str, float] | None = None
    schedule: str | None = None
    start: int = 0
    end: int = 0
    every: int = 1
    round_to: int = 1

    def check(self) -> PruneConfig:
        """The configuration, or a one-line error (a schedule's own values are checked by
        :meth:`prunekit.schedule.Schedule.check`, which knows the run's length)."""
        check_granularity(self.granularity, self.scope)
        if self.schedule is None:
            check_ratio(self.ratio)
        if self.ratios is not None:
            if self.scope != "layer":
                raise PrunekitError("a ratio per group needs --scope layer; global scope ranks "
                                    "all units by one threshold")
            for name, r in self.ratios.items():
                check_ratio(r, f"the ratio of {name!r}")
        check_round_to(self.round_to, self.granularity)
        return self


def check_ratio(ratio: float, what: str = "--ratio") -> None:
    if not 0 <= ratio < 1:
        raise PrunekitError(f"{what} must lie in [0, 1) (the fraction removed), got {ratio}")


def prunable(ck: Checkpoint) -> list[str]:
    """State-dict names of a checkpoint's prunable weights, in model order."""
    return ck.skeleton().prunable()


def removed_count(ratio: float, n: int) -> int:
    """Units removed out of ``n`` at ``ratio``: rounded, and never all of them."""
    return min(int(round(ratio * n)), n - 1)


def rounded_up(keep: int, multiple: int, n: int) -> int:
    """``keep`` raised to a multiple of ``multiple``, at most ``n``."""
    return min(n, -(-keep // multiple) * multiple)


def unit_scores(score: Tensor, granularity: str) -> Tensor:
    """A weight's per-unit scores: its weights', its kernels' means, or its filters' means."""
    if granularity == "weight":
        return score
    if granularity == "kernel":
        return score.flatten(2).mean(2) if score.ndim == 4 else score
    return score.flatten(1).mean(1)


def _lowest(scores: Tensor, count: int) -> Tensor:
    """Boolean mask of the ``count`` lowest scores (a selection, not a full sort)."""
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    if count > 0:
        out[torch.topk(scores.flatten(), count, largest=False, sorted=False).indices] = True
    return out.view(scores.shape)


def keep_highest(scores: Tensor, keep: int) -> Tensor:
    """Boolean keep-mask of the ``keep`` highest scores (removes the lowest, ties as
    ``topk`` breaks them)."""
    return ~_lowest(scores, scores.numel() - keep)


class Units:
    """The units a granularity prunes in a model, and how their keep-masks become weight masks.

    Weights and kernels: one set of units per prunable weight. Filters: one per prunable
    channel group, whose channel scores are the mean over the group's ``scored`` weights of
    their filter scores.
    """

    def __init__(self, model: Detector, granularity: str,
                 scored: Collection[str] | None = None) -> None:
        """``scored``: the weights that have scores (default: every prunable weight); units
        of the others, and filter groups ranked by them, are left whole."""
        self.granularity = granularity
        self.names = model.prunable()
        if scored is not None:
            self.names = [n for n in self.names if n in scored]
        if granularity == "filter":
            self.groups = [g for g in model.channel_groups()
                           if g.prunable and all(n in self.names for n in g.scored)]
            self.sets = [g.scored for g in self.groups]
        else:
            self.groups = []
            self.sets = [(n,) for n in self.names]
        # Each set's name: its channel group's, or its weight's.
        self.labels = [g.name for g in self.groups] if self.groups else [s[0] for s in self.sets]

    def scores(self, per_weight: Mapping[str, Tensor]) -> list[Tensor]:
        """Each set's unit scores from per-weight unit scores (:func:`unit_scores`)."""
        return [per_weight[s[0]] if len(s) == 1 else torch.stack([per_weight[n] for n in s])
                .mean(0) for s in self.sets]

    def select(self, scores: list[Tensor], ratio: float | Sequence[float], scope: str,
               keep_top: KeepTop, round_to: int = 1) -> list[Tensor]:
        """Each set's keep-mask: the highest ``1 − ratio`` of its units (``layer``; ``ratio``
        may be one per set), or of all units together (``global``, where every set still keeps
        its best unit); with ``round_to`` (filters), each set keeps its next best units up to
        a multiple of it."""
        if scope == "layer":
            each = [ratio] * len(scores) if isinstance(ratio, int | float) else list(ratio)
            return [keep_top(u, rounded_up(u.numel() - removed_count(r, u.numel()), round_to,
                                           u.numel()))
                    for u, r in zip(scores, each, strict=True)]
        if not isinstance(ratio, int | float):
            raise PrunekitError("a ratio per group needs --scope layer; global scope ranks all "
                                "units by one threshold")
        flat = torch.cat([u.flatten() for u in scores])
        keep = keep_top(flat, flat.numel() - removed_count(ratio, flat.numel()))
        out, offset = [], 0
        for u in scores:
            k = keep[offset:offset + u.numel()].view(u.shape)
            offset += u.numel()
            if not k.any():
                best = torch.zeros(u.numel(), dtype=torch.bool, device=u.device)
                best[u.flatten().argmax()] = True
                k = torch.where(best.view(u.shape), torch.ones_like(k), k)
            kept = int((k != 0).sum())
            if round_to > 1 and rounded_up(kept, round_to, u.numel()) != kept:
                k = keep_top(u, rounded_up(kept, round_to, u.numel()))
            out.append(k)
        return out

    def per_set(self, ratios: Mapping[str, float], ratio: float) -> list[float]:
        """Each set's ratio: the one ``ratios`` names it with, else ``ratio``."""
        unknown = sorted(set(ratios) - set(self.labels))
        if unknown:
            kind = "channel group" if self.granularity == "filter" else "prunable weight"
            raise PrunekitError(f"{unknown[0]!r} is not a prunable {kind} of this model "
                                f"({self.granularity} granularity); use the names `prunekit "
                                f"sensitivity` writes for this checkpoint")
        return [ratios.get(label, ratio) for label in self.labels]

    def expand(self, keeps: list[Tensor], shapes: Mapping[str, torch.Size], *,
               producers: bool = True) -> dict[str, Tensor]:
        """Weight masks from the sets' keep-masks. For filters, every producer of a group's
        channels is masked (``producers``), or only its scored weights."""
        if self.granularity != "filter":
            return {s[0]: _broadcast(k, shapes[s[0]], 0, 0) for s, k in zip(self.sets, keeps,
                                                                             strict=True)}
        out: dict[str, Tensor] = {}
        for group, keep in zip(self.groups, keeps, strict=True):
            for s in group.producers:
                if producers or s.name in group.scored:
                    out[s.name] = _broadcast(keep, shapes[s.name], s.dim, s.offset)
        return out


def _broadcast(keep: Tensor, shape: torch.Size, dim: int, offset: int) -> Tensor:
    """A mask of ``shape`` that is ``keep`` at ``offset..`` along ``dim`` (kept elsewhere),
    broadcast over the other dimensions (a view: copy it to keep it)."""
    if keep.ndim == len(shape):  # a unit per weight
        return keep
    if keep.ndim > 1:  # kernels: units over the first dimensions
        return keep.reshape(*keep.shape, *[1] * (len(shape) - keep.ndim)).expand(shape)
    if offset or keep.numel() != shape[dim]:
        ones = torch.ones(shape[dim], dtype=keep.dtype, device=keep.device)
        keep = torch.cat((ones[:offset], keep, ones[offset + keep.numel():]))
    view = [1] * len(shape)
    view[dim] = -1
    return keep.reshape(view).expand(shape)


def check_round_to(round_to: int, granularity: str) -> None:
    if round_to < 1:
        raise PrunekitError(f"--round-to must be at least 1 (1: no rounding), got {round_to}")
    if round_to > 1 and granularity != "filter":
        raise PrunekitError(f"--round-to rounds the filters a layer keeps; it needs "
                            f"--granularity filter, not {granularity}")


def make_masks(ck: Checkpoint, ratio: float, *, granularity: str = "weight",
               scope: str = "layer", ratios: Mapping[str, float] | None = None,
               round_to: int = 1) -> dict[str, Tensor]:
    """Keep-masks (True = kept) at ``ratio``, combined with the checkpoint's earlier masks.

    Args:
        ck: a checkpoint with ``scores`` for every prunable weight.
        ratio: fraction of units removed, in [0, 1).
        granularity: ``weight``, ``kernel`` or ``filter``.
        scope: ``layer`` (the same ratio in every layer) or ``global``.
        ratios: a ratio per set of units (see :class:`PruneConfig`).
        round_to: filters: every channel group keeps a multiple of this many channels (its
            next best ones, never more than it has): the widths CPU kernels vectorise best,
            for a few more MACs.
    """
    PruneConfig(ratio, granularity, scope, ratios=ratios, round_to=round_to).check()
    model = ck.skeleton()
    scores = _checked_scores(ck, model.prunable())
    return masks_from_scores(model, ck.state, scores, ratio, granularity=granularity,
                             scope=scope, earlier=ck.masks, ratios=ratios, round_to=round_to)


def masks_from_scores(model: Detector, state: Mapping[str, Tensor],
                      scores: Mapping[str, Tensor], ratio: float, *, granularity: str,
                      scope: str, earlier: Mapping[str, Tensor],
                      ratios: Mapping[str, float] | None = None,
                      round_to: int = 1) -> dict[str, Tensor]:
    """Keep-masks (on the CPU) at ``ratio`` (or per set, ``ratios``) from per-weight ``scores``
    of ``model``'s prunable weights, combined with the ``earlier`` masks, whose removed units
    rank first; with ``round_to``, every filter group keeps a multiple of it (see
    :class:`PruneConfig`)."""
    units = Units(model, granularity, scored=scores)
    each: float | list[float] = ratio if ratios is None else units.per_set(ratios, ratio)
    old = {n: m.cpu() for n, m in earlier.items()}
    per_weight = {n: _earlier(unit_scores(s.detach().float().cpu(), granularity), old.get(n),
                              granularity) for n, s in scores.items()}
    keeps = units.select(units.scores(per_weight), each, scope, keep_highest, round_to)
    new = units.expand(keeps, {n: t.shape for n, t in state.items()})
    combined = dict(old)
    for n, m in new.items():
        combined[n] = m & old[n] if n in old else m.clone()
    return combined


def unscored(ck: Checkpoint) -> list[str]:
    """The prunable weights the last ``score`` left without a score (no gradient): left
    unpruned."""
    entry = next((h for h in reversed(ck.history) if h.get("command") == "score"), None)
    return list((entry or {}).get("args", {}).get("unscored") or []) if ck.scores else []


def _checked_scores(ck: Checkpoint, names: list[str]) -> dict[str, Tensor]:
    """The scores of every prunable weight that has one: all of them, but those the last
    ``score`` left unscored."""
    left = set(unscored(ck))
    missing = [n for n in names if n not in ck.scores and n not in left]
    if missing or not ck.scores:
        name = missing[0] if missing else names[0]
        raise PrunekitError(f"{ck.name} has no scores for {name!r}; run `prunekit score` "
                            f"on this checkpoint first")
    scores = {}
    for n in (n for n in names if n in ck.scores):
        s = ck.scores[n].float()
        if s.shape != ck.state[n].shape:
            raise PrunekitError(f"{ck.name}: scores for {n!r} have shape {list(s.shape)}, the "
                                f"weight {list(ck.state[n].shape)}; score this checkpoint again")
        if not torch.isfinite(s).all():
            raise PrunekitError(f"{ck.name}: scores for {n!r} are not finite; score again")
        scores[n] = s
    return scores


def _earlier(unit: Tensor, old: Tensor | None, granularity: str) -> Tensor:
    """Units an earlier mask removed entirely rank first (score -inf)."""
    if old is None:
        return unit
    gone = ~unit_scores(old.float(), granularity).bool() if granularity != "weight" else ~old
    return unit.masked_fill(gone, float("-inf"))


def apply(state: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state`` with masked entries set to exactly +0.0."""
    out = dict(state)
    for n, m in masks.items():
        out[n] = state[n].masked_fill(~m, 0.0)
    return out


def mask(ck: Checkpoint, config: PruneConfig) -> Checkpoint:
    """Prune a scored checkpoint: masks at ``config.ratio``, applied; compacted when
    ``config.compact`` (see :func:`compact_checkpoint`).

    Returns:
        The pruned checkpoint: masks, no scores.
    """
    config.check()
    masks = make_masks(ck, config.ratio, granularity=config.granularity, scope=config.scope,
                       ratios=config.ratios, round_to=config.round_to)
    out = copy.copy(ck)
    out.state = apply(ck.state, masks)
    out.masks = masks
    out.scores = {}
    out.history = list(ck.history)
    summary = sparsity_summary(out)
    out.add_history("mask", {"prune": asdict(config), **summary, "unpruned": unscored(ck)})
    return compact_checkpoint(out) if config.compact else out


def compact_checkpoint(ck: Checkpoint) -> Checkpoint:
    """Physically remove zero channels and the weights that read them; the new widths go
    into ``arch``. The compacted model computes what the masked one does, faster."""
    arch, state, masks = compact(ck.skeleton(), ck.state, ck.masks)
    out = copy.copy(ck)
    out.arch, out.state, out.masks = arch, state, masks
    out.history = list(ck.history)
    before = sum(ck.state[k].numel() for k in prunable(ck))
    after = sum(state[k].numel() for k in prunable(out))
    out.add_history("compact", {"prunable_weights_before": before, "prunable_weights_after":
                                after})
    return out


def sparsity_summary(ck: Checkpoint) -> dict[str, Any]:
    names = prunable(ck)
    total = sum(ck.state[n].numel() for n in names)
    zero = sum(int((ck.state[n] == 0).sum()) for n in names)
    return {"prunable_weights": total, "zeroed": zero, "sparsity": zero / total if total else 0}
