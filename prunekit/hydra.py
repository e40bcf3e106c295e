"""HYDRA's score optimisation, adapted to detectors (the paper's robust pruning scores).

Scores start from the scaled initialisation s = sqrt(6 / fan_in) · w / max|w| (per layer, so
the starting mask is magnitude pruning), then SGD trains the scores with the weights frozen,
through a mask that keeps the top (1 − ratio) of |s| per layer (``scope="layer"``, as HYDRA) or
overall (``global``), at the target granularity (a filter's or kernel's score being the mean of
its weights'), with a straight-through estimator: the mask's gradient reaches every score
unchanged. The objective is the model's detection loss, on adversarial examples of the masked
model under a PGD ``attack`` (as HYDRA). BatchNorm stays in eval mode: scoring never changes the
model. The mask is a top-k selection (``torch.topk``, a partial selection), not a full sort on
every forward pass; units are ranked by the same :class:`~prunekit.mask.Units` as ``mask``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.func import functional_call

from prunekit.attack import AttackConfig
from prunekit.errors import PrunekitError
from prunekit.mask import PruneConfig, Units, unit_scores
from prunekit.models.base import Detector

Progress = Callable[[int, int], None]


def scaled_init(state: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    """HYDRA's scaled initialisation, s = sqrt(6 / fan_in) · w / max|w|, per layer."""
    out = {}
    for n in names:
        w = state[n].float()
        fan_in = w[0].numel()
        peak = w.abs().max()
        out[n] = math.sqrt(6 / fan_in) * w / (peak if peak > 0 else 1.0)
    return out


class _TopK(torch.autograd.Function):
    """Keep-mask of the ``keep`` highest unit scores; the gradient passes straight through."""

    @staticmethod
    def forward(ctx, units: Tensor, keep: int) -> Tensor:  # noqa: ANN001
        out = torch.zeros_like(units)
        if keep > 0:
            out.view(-1)[torch.topk(units.flatten(), keep, sorted=False).indices] = 1.0
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return grad, None


class HydraMasker:
    """Differentiable (straight-through) masks from scores, at a granularity and scope."""

    def __init__(self, model: Detector, ratio: float, granularity: str, scope: str) -> None:
        self.ratio, self.granularity, self.scope = ratio, granularity, scope
        self.units = Units(model, granularity)
        params = dict(model.named_parameters())
        self.shapes = {n: params[n].shape for n in self.units.names}

    def masks(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """Float 0/1 masks for every prunable weight; channels a group may not lose, and
        weights outside any prunable group, stay whole."""
        per_weight = {n: unit_scores(scores[n].abs(), self.granularity)
                      for n in self.units.names}
        keeps = self.units.select(self.units.scores(per_weight), self.ratio, self.scope,
                                  _TopK.apply)
        out = self.units.expand(keeps, self.shapes, producers=False)
        for n in self.units.names:
            if n not in out:
                out[n] = torch.ones(self.shapes[n], device=scores[n].device)
        return out


def hydra(model: Detector, batches: Iterable, target: PruneConfig, *, steps: int,
          lr: float = 0.1, momentum: float = 0.9, attack: AttackConfig | None = None,
          masks: dict[str, Tensor] | None = None, seed: int = 0,
          progress: Progress | None = None) -> dict[str, Tensor]:
    """HYDRA score optimisation (see the module docstring).

    Args:
        model: the detector; its weights are frozen and unchanged (their ``requires_grad``
            too).
        batches: an endless or long enough iterable of training batches.
        target: the pruning the mask is built for during optimisation: its ratio, granularity
            and scope.
        steps: SGD steps on the scores.
        lr: SGD learning rate (HYDRA: 0.1, cosine decay).
        momentum: SGD momentum.
        attack: optimise on adversarial examples of the masked model (``pgd`` or ``fgsm``);
            None: on clean images.
        masks: earlier masks: pruned weights stay pruned (their weight is zero).
        seed: seed for the attack's random start.
        progress: ``progress(step, steps)`` callback.

    Returns:
        The optimised scores (|s| ranks the weights), float32 on the CPU.
    """
    ratio, granularity, scope = target.ratio, target.granularity, target.scope
    model.eval()
    device = next(model.parameters()).device
    state = model.state_dict()
    names = model.prunable()
    weights = {n: state[n].detach() for n in names}
    scores = {n: s.to(device).requires_grad_(True) for n, s in scaled_init(state, names).items()}
    masker = HydraMasker(model, ratio, granularity, scope)
    optimizer = torch.optim.SGD(list(scores.values()), lr=lr, momentum=momentum,
                                weight_decay=1e-4)
    adversary = None
    if attack is not None:
        from prunekit.attack import training_attack

        adversary = training_attack(attack)
        shadow = copy.deepcopy(model).eval()
        shadow_params = dict(shadow.named_parameters())
    trainable = {p: p.requires_grad for p in model.parameters()}
    for p in trainable:
        p.requires_grad_(False)
    step = 0
    try:
        for images, targets, _ in batches:
            if step >= steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            x = images.to(device)
            if adversary is not None:
                with torch.no_grad():
                    current = masker.masks(scores)
                    for n, w in weights.items():
                        shadow_params[n].copy_(w * current[n])
                torch.manual_seed(seed * 1_000_003 + step)
                x = adversary(shadow, x, targets)
            m = masker.masks(scores)
            overrides = {n: weights[n] * m[n] for n in weights}
            geometries = [t.geometry for t in targets]
            outputs = functional_call(model, overrides, (x,), {"geometries": geometries})
            loss, _ = model.loss(outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if masks:
                for n, keep in masks.items():
                    if n in scores and scores[n].grad is not None:
                        scores[n].grad.masked_fill_(~keep.to(device), 0.0)
            optimizer.step()
            step += 1
            if progress:
                progress(step, steps)
    finally:
        for p, flag in trainable.items():  # frozen parameters (an imported backbone) stay so
            p.requires_grad_(flag)
    if step < steps:
        raise PrunekitError(f"the data ran out after {step} of {steps} HYDRA steps; lower "
                            f"--steps")
    return {n: s.detach().abs().float().cpu() for n, s in scores.items()}
