"""Importance scores for every prunable weight (conv and linear weights).

Methods:

* ``magnitude``: |w|.
* ``l1-filter``: every weight gets its filter's L1 norm (Li et al.'s filter pruning; the
  second study's method), so a filter's mean score is its L1 norm.
* ``random``: uniform noise, a control.
* ``taylor``: first-order Taylor importance |w · ∂L/∂w|, averaged over calibration batches.
* ``deeplift``: each weight's DeepLIFT contribution to the detector's evidence for the
  ground-truth objects (:mod:`prunekit.deeplift`), averaged over calibration batches.
* ``hydra``: HYDRA's score optimisation. Scores start from the scaled initialisation
  s = sqrt(6 / fan_in) · w / max|w| (per layer, so the starting mask is magnitude pruning), then
  SGD trains the scores with the weights frozen, through a mask that keeps the top
  (1 − ratio) of |s| per layer (``scope="layer"``, as HYDRA) or overall (``global``), at the
  target granularity (a filter's or kernel's score being the mean of its weights'), with a
  straight-through estimator: the mask's gradient reaches every score unchanged. The objective
  is the detection loss, on adversarial examples of the masked model with ``adv="pgd"`` (as
  HYDRA). BatchNorm stays in eval mode: scoring never changes the model. The mask is a top-k
  selection (``torch.topk``, a partial selection), not a full sort on every forward pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.loss import yolo_loss
from prunekit.mask import GRANULARITIES, SCOPES, _removed_count, prunable

METHODS = ("magnitude", "l1-filter", "random", "taylor", "deeplift", "hydra")
NEEDS_DATA = ("taylor", "deeplift", "hydra")
Progress = Callable[[int, int], None]


def magnitude(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {n: state[n].abs().float() for n in prunable(state)}


def l1_filter(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for n in prunable(state):
        w = state[n].float()
        norm = w.abs().flatten(1).sum(1)
        out[n] = norm.view(-1, *([1] * (w.ndim - 1))).expand_as(w).clone()
    return out


# Added to the seed of ``random`` scores. `init` seeds torch's generator with its own seed and
# draws the weights uniformly, layer by layer; uniform draws from that same seed, in the same
# layer order, were the initial weights again, so a ``random`` control seeded like the model
# kept its largest initial weights (correlation 0.84-0.96 with the trained baseline's weights,
# and mAP 0.001 after 50 % weight pruning and a short fine-tune, where noise unrelated to the
# weights gives 0.43).
_RANDOM_STREAM = 0x5C0E5_0000


def random_scores(state: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Uniform noise for every prunable weight, from a stream no other seeded draw uses."""
    g = torch.Generator().manual_seed(_RANDOM_STREAM + seed)
    return {n: torch.rand(state[n].shape, generator=g) for n in prunable(state)}


def taylor(model: nn.Module, batches: Iterable, *, max_batches: int,
           progress: Progress | None = None) -> dict[str, Tensor]:
    """Mean over batches of |w · ∂L/∂w| (the model stays in eval mode)."""
    names = prunable(model.state_dict())
    params = dict(model.named_parameters())
    anchors = [h.anchors for h in model.heads()]
    totals = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    model.eval()
    count = 0
    for images, targets, _ in batches:
        if count >= max_batches:
            break
        device = params[names[0]].device
        model.zero_grad(set_to_none=True)
        loss, _ = yolo_loss(model(images.to(device)), targets, anchors, model.img_size,
                            model.num_classes)
        loss.backward()
        for n in names:
            totals[n] += (params[n].detach() * params[n].grad).abs().float()
        count += 1
        if progress:
            progress(count, max_batches)
    model.zero_grad(set_to_none=True)
    if not count:
        raise PrunekitError("no calibration batches: the dataset is empty")
    return {n: (t / count).cpu() for n, t in totals.items()}


# ----------------------------------------------------------------------------------- HYDRA


def scaled_init(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HYDRA's scaled initialisation, s = sqrt(6 / fan_in) · w / max|w|, per layer."""
    out = {}
    for n in prunable(state):
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
    """Builds differentiable masks from scores at a granularity and scope."""

    def __init__(self, state: dict[str, Tensor], arch: dict[str, Any], ratio: float,
                 granularity: str, scope: str) -> None:
        from prunekit.models.channels import filter_groups

        self.ratio, self.granularity, self.scope = ratio, granularity, scope
        self.names = prunable(state)
        self.shapes = {n: state[n].shape for n in self.names}
        self.groups = ([g for g in filter_groups(arch) if g.prunable]
                       if granularity == "filter" else [])

    def _units(self, s: Tensor) -> Tensor:
        a = s.abs()
        if self.granularity == "kernel" and a.ndim == 4:
            return a.flatten(2).mean(2)
        if self.granularity == "filter":
            return a.flatten(1).mean(1)
        return a

    @staticmethod
    def _expand(m: Tensor, shape: torch.Size) -> Tensor:
        while m.ndim < len(shape):
            m = m.unsqueeze(-1)
        return m.expand(shape)

    def masks(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """Float 0/1 masks, differentiable (straight through) with respect to ``scores``."""
        if self.granularity == "filter":
            return self._filter_masks(scores)
        units = {n: self._units(scores[n]) for n in self.names}
        if self.scope == "layer":
            unit_masks = {n: _TopK.apply(u, u.numel() - _removed_count(self.ratio, u.numel(),
                                                                      True))
                          for n, u in units.items()}
        else:
            flat = torch.cat([u.flatten() for u in units.values()])
            keep = _TopK.apply(flat, flat.numel() - _removed_count(self.ratio, flat.numel(),
                                                                   True))
            unit_masks, offset = {}, 0
            for n, u in units.items():
                unit_masks[n] = keep[offset:offset + u.numel()].view(u.shape)
                offset += u.numel()
        return {n: self._expand(unit_masks[n], self.shapes[n]) for n in self.names}

    def _filter_masks(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        group_units = []
        for g in self.groups:
            per = [self._units(scores[f"layers.{i}.conv.weight"]) for i in g.layers]
            group_units.append(torch.stack(per).mean(0))
        if self.scope == "layer":
            keeps = [_TopK.apply(u, u.numel() - _removed_count(self.ratio, u.numel(), True))
                     for u in group_units]
        else:
            flat = torch.cat(group_units)
            keep = _TopK.apply(flat, flat.numel() - _removed_count(self.ratio, flat.numel(),
                                                                   True))
            keeps, offset = [], 0
            for u in group_units:
                keeps.append(keep[offset:offset + u.numel()])
                offset += u.numel()
        for g, k in zip(self.groups, keeps, strict=True):
            for i in g.layers:
                n = f"layers.{i}.conv.weight"
                out[n] = self._expand(k, self.shapes[n])
        for n in self.names:  # heads and unprunable groups stay whole
            if n not in out:
                out[n] = torch.ones(self.shapes[n], device=scores[n].device)
        return out


def hydra(model: nn.Module, arch: dict[str, Any], batches: Iterable, *, ratio: float,
          steps: int, lr: float = 0.1, momentum: float = 0.9, granularity: str = "weight",
          scope: str = "layer", adv: str = "none", eps: float = 0.05, alpha: float = 0.02,
          adv_steps: int = 5, masks: dict[str, Tensor] | None = None, seed: int = 0,
          progress: Progress | None = None) -> dict[str, Tensor]:
    """HYDRA score optimisation (see the module docstring).

    Args:
        model: the detector; its weights are frozen and unchanged.
        arch: its architecture (for filter groups).
        batches: an endless or long enough iterable of training batches.
        ratio: the target pruning ratio the mask is built at.
        steps: SGD steps on the scores.
        lr: SGD learning rate (HYDRA: 0.1, cosine decay).
        momentum: SGD momentum.
        granularity: mask granularity during optimisation.
        scope: ``layer`` or ``global``.
        adv: ``pgd`` or ``fgsm`` to optimise on adversarial examples of the masked model.
        eps: attack radius.
        alpha: attack step.
        adv_steps: PGD steps.
        masks: earlier masks: pruned weights stay pruned (their weight is zero).
        seed: seed for the attack's random start.
        progress: ``progress(step, steps)`` callback.

    Returns:
        The optimised scores (|s| ranks the weights), float32 on the CPU.
    """
    model.eval()
    device = next(model.parameters()).device
    state = model.state_dict()
    weights = {n: state[n].detach() for n in prunable(state)}
    scores = {n: s.to(device).requires_grad_(True) for n, s in scaled_init(state).items()}
    masker = HydraMasker(state, arch, ratio, granularity, scope)
    optimizer = torch.optim.SGD(list(scores.values()), lr=lr, momentum=momentum,
                                weight_decay=1e-4)
    anchors = [h.anchors for h in model.heads()]
    attack = None
    if adv != "none":
        from prunekit.attack import training_attack

        attack = training_attack(adv, eps=eps, alpha=alpha, steps=adv_steps)
        shadow = copy.deepcopy(model).eval()
        shadow_params = dict(shadow.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    step = 0
    try:
        for images, targets, _ in batches:
            if step >= steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            x = images.to(device)
            if attack is not None:
                with torch.no_grad():
                    current = masker.masks(scores)
                    for n, w in weights.items():
                        shadow_params[n].copy_(w * current[n])
                torch.manual_seed(seed * 1_000_003 + step)
                x = attack(shadow, x, targets)
            m = masker.masks(scores)
            overrides = {n: weights[n] * m[n] for n in weights}
            outputs = functional_call(model, overrides, (x,))
            loss, _ = yolo_loss(outputs, targets, anchors, model.img_size, model.num_classes)
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
        for p in model.parameters():
            p.requires_grad_(True)
    if step < steps:
        raise PrunekitError(f"the data ran out after {step} of {steps} HYDRA steps; lower "
                            f"--steps")
    return {n: s.detach().abs().float().cpu() for n, s in scores.items()}


# ------------------------------------------------------------------------------- the command


def score(ck: Checkpoint, method: str, *, data: str | None = None, images: str | None = None,
          ratio: float = 0.5, steps: int = 100, lr: float = 0.1, granularity: str = "weight",
          scope: str = "layer", adv: str = "none", eps: float = 0.05, alpha: float = 0.02,
          adv_steps: int = 5, baseline: str = "black", batches: int = 16,
          batch_size: int | None = None,
          workers: int = 1, seed: int = 0, device: str = "auto",
          progress: Progress | None = None) -> Checkpoint:
    """Add ``scores.<name>`` for every prunable weight to a checkpoint.

    Args:
        ck: the checkpoint.
        method: one of :data:`METHODS`.
        data: training COCO JSON (for ``taylor``, ``deeplift``, ``hydra``).
        images: image root for ``data``.
        ratio: HYDRA's target pruning ratio.
        steps: HYDRA's optimisation steps.
        lr: HYDRA's learning rate.
        granularity: HYDRA's mask granularity (use the one you will prune at).
        scope: HYDRA's mask scope.
        adv: HYDRA on adversarial examples (``pgd`` or ``fgsm``).
        eps: attack radius.
        alpha: attack step.
        adv_steps: PGD steps.
        baseline: DeepLIFT's reference input (``black``, ``white``, ``grey``, ``blur``).
        batches: calibration batches for ``taylor`` and ``deeplift``.
        batch_size: images per batch (default 32; 4 for ``deeplift``, whose contribution is
            summed over a batch before its absolute value is taken, so small batches keep
            opposite contributions of different images from cancelling).
        workers: DataLoader workers.
        seed: seed for ``random``, the batch order and attacks.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: ``progress(done, total)`` callback.
    """
    if method not in METHODS:
        raise PrunekitError(f"--method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if granularity not in GRANULARITIES or scope not in SCOPES:
        raise PrunekitError("--granularity must be weight, kernel or filter and --scope layer "
                            "or global")
    if method in NEEDS_DATA and data is None:
        raise PrunekitError(f"--method {method} needs training images: give --data train.json")
    if method == "hydra" and not 0 <= ratio < 1:
        raise PrunekitError(f"--ratio must lie in [0, 1), got {ratio}")
    if batch_size is None:
        batch_size = 4 if method == "deeplift" else 32
    if steps < 1 or batches < 1 or batch_size < 1:
        raise PrunekitError("--steps, --batches and --batch-size must be at least 1")
    args: dict[str, Any] = {"method": method, "data": data, "seed": seed}
    state = ck.state
    if method == "magnitude":
        scores = magnitude(state)
    elif method == "l1-filter":
        scores = l1_filter(state)
    elif method == "random":
        scores = random_scores(state, seed)
    else:
        from prunekit.bench import resolve_device
        from prunekit.data.coco import CocoDetection, loader
        from prunekit.finetune import _EpochBatches

        dev = resolve_device(device)
        model = ck.build().to(dev)
        augment = method == "hydra"
        dataset = CocoDetection(data, model.img_size, images=images, classes=model.classes,
                                augment=augment, cache=method == "hydra")
        size = min(batch_size, len(dataset))
        n = steps if method == "hydra" else batches
        batch_iter = loader(dataset, size, workers=workers,
                            batch_sampler=_EpochBatches(len(dataset), size, seed, 0, n))
        if method == "taylor":
            scores = taylor(model, batch_iter, max_batches=n, progress=progress)
            args.update(batches=n, batch_size=size)
        elif method == "deeplift":
            from prunekit.deeplift import deeplift_scores

            scores = deeplift_scores(model, _counting(batch_iter, n, progress),
                                     baseline=baseline, max_batches=n, device=dev)
            args.update(batches=n, batch_size=size, baseline=baseline)
        else:
            scores = hydra(model, ck.arch, batch_iter, ratio=ratio, steps=steps, lr=lr,
                           granularity=granularity, scope=scope, adv=adv, eps=eps, alpha=alpha,
                           adv_steps=adv_steps, masks=ck.masks, seed=seed, progress=progress)
            args.update(ratio=ratio, steps=steps, lr=lr, granularity=granularity, scope=scope,
                        adv=adv, eps=eps, alpha=alpha, adv_steps=adv_steps,
                        batch_size=size)
    out = copy.copy(ck)
    out.scores = {n: s.float().contiguous() for n, s in scores.items()}
    out.history = list(ck.history)
    return out.add_history("score", args)


def _counting(batches: Iterable, total: int, progress: Progress | None):
    for k, batch in enumerate(batches, 1):
        yield batch
        if progress:
            progress(k, total)
