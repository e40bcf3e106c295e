"""Gradual pruning while training: the sparsity schedule and the pruner that follows it.

Zhu & Gupta ("To prune or not to prune", 2017) raise the sparsity from ``s_i`` to ``s_f`` along

    s_t = s_f + (s_i − s_f) · (1 − (t − t₀) / (n·Δt))³,   t = t₀, t₀ + Δt, …, t₀ + n·Δt,

recomputing the masks every Δt steps while training goes on, so the network recovers from each
small cut before the next; early updates remove the most (the redundant weights), late ones the
least. :class:`Schedule` gives that (``cubic``), a straight line (``linear``) and everything at
``t₀`` (``one-shot``, the control); its steps are optimiser steps, its sparsities the fraction of
units removed in the sense of :mod:`prunekit.mask` (weights, kernels or filters; per layer or
global).

:class:`Pruner` recomputes the keep-masks at each of the schedule's updates from the scores of
the checkpoint's score method, re-ranked on the weights as they are then: ``magnitude`` (|w|),
``l1-filter`` (filter L1 norms), ``taylor`` (|w · ∂L/∂w| accumulated over the steps since the
last update); methods whose scores cannot be recomputed from the weights (``hydra``, whose scores
were optimised, ``deeplift``, ``random``) rank by the checkpoint's scores. A unit once removed
stays removed: every new mask is combined with the earlier one (as ``mask`` combines masks) and
removed units rank first, so the masks only shrink and the sparsity is exactly the schedule's.
The masks depend only on the weights, the gradients and the step, which every rank of a
distributed run shares, so every rank computes the same masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from prunekit.errors import PrunekitError
from prunekit.mask import GRANULARITIES, SCOPES, masks_from_scores

KINDS = ("one-shot", "linear", "cubic")
#: Score methods recomputed from the weights (and gradients) at every update.
DYNAMIC = ("magnitude", "l1-filter", "taylor")


@dataclass(frozen=True)
class Schedule:
    """The sparsity at each optimiser step.

    Attributes:
        target: the final sparsity ``s_f`` (fraction of units removed).
        kind: ``one-shot``, ``linear`` or ``cubic``.
        start: the first update's step ``t₀`` (0: before the first optimiser step).
        end: the last update's step ``t₀ + n·Δt``, where the sparsity reaches ``target``.
        every: steps between updates ``Δt``.
        initial: the starting sparsity ``s_i`` (the checkpoint's, usually 0).
    """

    target: float
    kind: Literal["one-shot", "linear", "cubic"] = "cubic"
    start: int = 0
    end: int = 0
    every: int = 1
    initial: float = 0.0

    def check(self, steps: int | None = None) -> Schedule:
        """The schedule, or a one-line error naming the bad value and the fix."""
        if self.kind not in KINDS:
            raise PrunekitError(f"--schedule {self.kind!r} is unknown; use one-shot, linear or "
                                f"cubic")
        if not 0 < self.target < 1:
            raise PrunekitError(f"--prune-to must lie in (0, 1) (the fraction removed), got "
                                f"{self.target:g}")
        if self.start < 0:
            raise PrunekitError(f"--prune-start must be 0 or more, got {self.start}")
        if self.end < self.start:
            raise PrunekitError(f"--prune-end ({self.end}) comes before --prune-start "
                                f"({self.start}); give an end at or after the start")
        if self.every < 1:
            raise PrunekitError(f"--prune-every must be at least 1, got {self.every}")
        if steps is not None and self.end > steps:
            raise PrunekitError(f"--prune-end ({self.end}) is after the last step ({steps}); "
                                f"end the schedule within --steps")
        if self.initial > self.target:
            raise PrunekitError(f"the checkpoint is already {self.initial:.1%} sparse, more "
                                f"than --prune-to {self.target:g}; prune to more than it has")
        return self

    def updates(self) -> list[int]:
        """The steps at which the masks are recomputed (the end always among them)."""
        if self.kind == "one-shot" or self.end == self.start:
            return [self.start]
        return sorted(set(range(self.start, self.end, self.every)) | {self.end})

    def sparsity(self, step: int) -> float:
        """The sparsity in force from ``step`` on (the last update's at or before it)."""
        if step < self.start:
            return self.initial
        if self.kind == "one-shot" or step >= self.end:
            return self.target
        t = max(u for u in self.updates() if u <= step)
        frac = (t - self.start) / (self.end - self.start)
        if self.kind == "linear":
            return self.initial + (self.target - self.initial) * frac
        return self.target + (self.initial - self.target) * (1 - frac) ** 3


class Pruner:
    """Recomputes a model's keep-masks along a :class:`Schedule`.

    Args:
        model: the model being trained (a :class:`~prunekit.models.base.Detector`).
        schedule: the sparsity schedule.
        granularity: ``weight``, ``kernel`` or ``filter``.
        scope: ``layer`` or ``global``.
        method: the score method the masks rank by (see the module docstring).
        scores: the checkpoint's scores, for methods that are not recomputed.
    """

    def __init__(self, model, schedule: Schedule, *, granularity: str = "weight",
                 scope: str = "layer", method: str = "magnitude",
                 scores: dict[str, Tensor] | None = None) -> None:
        if granularity not in GRANULARITIES or scope not in SCOPES:
            raise PrunekitError(f"granularity {granularity!r} / scope {scope!r}: use weight, "
                                f"kernel or filter and layer or global")
        if method not in DYNAMIC and not scores:
            raise PrunekitError(f"the checkpoint's {method} scores are needed to prune by them "
                                f"while training; score it with `prunekit score --method "
                                f"{method}` first, or use magnitude, l1-filter or taylor")
        self.schedule = schedule
        self.granularity, self.scope, self.method = granularity, scope, method
        self.static = {k: v.float() for k, v in (scores or {}).items()}
        self.names = model.prunable()
        self.taylor: dict[str, Tensor] = {}
        self._updates = set(schedule.updates())

    def due(self, step: int) -> bool:
        """Whether the masks are recomputed before optimiser step ``step``."""
        return step in self._updates

    def observe(self, model) -> None:
        """After a backward pass: accumulate |w · ∂L/∂w| (``taylor`` only)."""
        if self.method != "taylor":
            return
        params = dict(model.named_parameters())
        for n in self.names:
            p = params[n]
            if p.grad is None:
                continue
            term = (p.detach() * p.grad.detach()).abs().float()
            self.taylor[n] = term if n not in self.taylor else self.taylor[n] + term

    def _scores(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.method == "magnitude":
            return {n: state[n].detach().abs().float() for n in self.names}
        if self.method == "l1-filter":
            out = {}
            for n in self.names:
                w = state[n].detach().float()
                out[n] = w.abs().flatten(1).sum(1).view(-1, *([1] * (w.ndim - 1))).expand_as(w)
            return out
        if self.method == "taylor":
            if not self.taylor:  # nothing observed yet (an update before the first step)
                return {n: state[n].detach().abs().float() for n in self.names}
            return {n: self.taylor.get(n, torch.zeros_like(state[n], dtype=torch.float32))
                    for n in self.names}
        return {n: self.static[n].to(state[n].device) for n in self.names}

    def update(self, model, step: int, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """The keep-masks in force from ``step`` on: the schedule's sparsity, ranked by the
        current scores, combined with ``masks`` (units once removed stay removed)."""
        state = dict(model.state_dict())
        ratio = self.schedule.sparsity(step)
        new = masks_from_scores(model, state, self._scores(state), ratio,
                                granularity=self.granularity, scope=self.scope, earlier=masks)
        self.taylor = {}
        return new

    def state_dict(self) -> dict[str, Tensor]:
        """What a resumed run needs besides the masks: the Taylor accumulators."""
        return {f"taylor.{n}": t for n, t in self.taylor.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.taylor = {k.removeprefix("taylor."): v for k, v in state.items()
                       if k.startswith("taylor.")}


def sparsity(masks: dict[str, Tensor], names: list[str], granularity: str) -> float:
    """The fraction of units the masks remove over ``names`` (what a schedule counts)."""
    from prunekit.mask import unit_scores

    removed = total = 0
    for n in names:
        if n not in masks:
            continue
        units = unit_scores(masks[n].float(), granularity) if granularity != "weight" \
            else masks[n].float()
        removed += int((units == 0).sum())
        total += units.numel()
    return removed / total if total else math.nan
