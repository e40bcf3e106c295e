"""One optimisation step (clean, or mixed with adversarial examples, masks held at zero), the
learning-rate schedule, the EMA of the weights, and BatchNorm re-estimation."""

from __future__ import annotations

import contextlib
import copy
import itertools
import math

import torch
from torch import Tensor, nn

from prunekit.errors import PrunekitError
from prunekit.models.base import Detector, Target


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 2 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


class EMA:
    """Exponential moving average of a model's state, with a warm-up so early steps count."""

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = min(0.9999, max(0.9, 1 - 1 / max(1.0, 0.05 * total_steps)))
        self.tau = max(1.0, total_steps / 20)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def recalibrate_bn(model: nn.Module, batches, count: int) -> None:
    """Re-estimate every BatchNorm's running statistics for the model's current weights.

    The running statistics are averages over the whole run; after pruning, or a short
    fine-tune, they describe weights that no longer exist, and an eval-mode model with stale
    statistics can lose most of its mAP. :func:`torch.optim.swa_utils.update_bn` fixes them
    with train-mode forward passes and a cumulative average over the first ``count`` batches;
    no weight changes.
    """
    from torch.optim.swa_utils import update_bn

    if count >= 1:
        update_bn(itertools.islice(batches, count), model,
                  device=next(model.parameters()).device)


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Zero every masked-out entry (``masked_fill`` keeps the zeros +0.0)."""
    if not masks:
        return
    state = model.state_dict()
    with torch.no_grad():
        for name, mask in masks.items():
            state[name].masked_fill_(~mask.to(state[name].device), 0.0)


def _mask_grads(model: nn.Module, masks: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params.get(name)
        if p is not None and p.grad is not None:
            p.grad.masked_fill_(~mask.to(p.grad.device), 0.0)


def train_step(model: Detector, images: Tensor, targets: list[Target], optimizer, *, adv=None,
               adv_mix: float = 0.5, masks: dict[str, Tensor] | None = None,
               autocast: torch.autocast | None = None, net: nn.Module | None = None,
               scale: float = 1.0) -> dict[str, float]:
    """One optimisation step on a batch (clean, or mixed with adversarial examples).

    Args:
        model: the detector (put in train mode here).
        images: N×3×H×W floats in [0, 1], in the model's input form.
        targets: the N images' targets.
        optimizer: the optimizer.
        adv: optional ``adv(model, images, targets) -> adversarial images`` (run in eval mode).
        adv_mix: weight of the adversarial loss; the clean loss gets ``1 - adv_mix``.
        masks: keep-masks to hold pruned weights at zero.
        autocast: a CUDA autocast context, or None.
        net: what the training forward goes through (the model wrapped in
            DistributedDataParallel); the attack always uses the unwrapped ``model``.
        scale: factor on the loss (and the reported parts): the number of processes when the
            family's loss sums over the batch and this process holds a share of it.
    """
    adv_images = None
    if adv is not None and adv_mix > 0:
        adv_images = adv(model, images, targets)
    geometries = [t.geometry for t in targets]
    net = model if net is None else net
    net.train()
    optimizer.zero_grad(set_to_none=True)
    parts: dict[str, float] = {}
    ctx = autocast if autocast is not None else contextlib.nullcontext()

    def _loss(x: Tensor) -> Tensor:
        with ctx:
            out = net(x, geometries)
        total, p = model.loss(out, targets)
        for k, v in p.items():
            parts[k] = parts.get(k, 0.0) + float(v.detach()) * scale
        return total * scale

    if adv_images is None:
        loss = _loss(images)
        parts["loss"] = float(loss.detach())
    elif adv_mix >= 1:
        loss = _loss(adv_images)
        parts["loss"] = parts["adv_loss"] = float(loss.detach())
    else:
        # One forward over clean and adversarial images together: BatchNorm sees both, as in
        # the usual mixed adversarial training, and the step costs one pass, not two.
        n = images.shape[0]
        with ctx:
            out = net(torch.cat((images, adv_images)), geometries * 2)
        lc, _ = model.loss(tuple(o[:n] for o in out), targets)
        la, _ = model.loss(tuple(o[n:] for o in out), targets)
        lc, la = lc * scale, la * scale
        loss = (1 - adv_mix) * lc + adv_mix * la
        parts.update(loss=float(loss.detach()), clean_loss=float(lc.detach()),
                     adv_loss=float(la.detach()))
    if not torch.isfinite(loss):
        raise PrunekitError(f"the loss became {float(loss.detach())}; training diverged: lower "
                            f"--lr")
    loss.backward()
    if masks:
        _mask_grads(model, masks)
    torch.nn.utils.clip_grad_norm_(model.parameters(), model.max_grad_norm)
    optimizer.step()
    if masks:
        apply_masks(model, masks)
    return parts
