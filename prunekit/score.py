"""Importance scores for every prunable weight (the family's prunable weights: conv and linear).

Methods:

* ``magnitude``: |w|.
* ``l1-filter``: every weight gets its filter's L1 norm (Li et al.'s filter pruning; the
  second study's method), so a filter's mean score is its L1 norm.
* ``random``: uniform noise, a control.
* ``taylor``: first-order Taylor importance |w · ∂L/∂w|, averaged over calibration batches.
* ``deeplift``: each weight's DeepLIFT contribution to the detector's evidence for the
  ground-truth objects (:mod:`prunekit.deeplift`), averaged over calibration batches.
* ``hydra``: HYDRA's score optimisation (:mod:`prunekit.hydra`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from prunekit.checkpoint import Checkpoint
from prunekit.device import resolve_device, set_threads
from prunekit.errors import PrunekitError
from prunekit.mask import check_granularity
from prunekit.models.base import Detector

METHODS = ("magnitude", "l1-filter", "random", "taylor", "deeplift", "hydra")
NEEDS_DATA = ("taylor", "deeplift", "hydra")
Progress = Callable[[int, int], None]


def magnitude(state: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    return {n: state[n].abs().float() for n in names}


def l1_filter(state: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    out = {}
    for n in names:
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


def random_scores(state: dict[str, Tensor], names: list[str], seed: int) -> dict[str, Tensor]:
    """Uniform noise for every prunable weight, from a stream no other seeded draw uses."""
    g = torch.Generator().manual_seed(_RANDOM_STREAM + seed)
    return {n: torch.rand(state[n].shape, generator=g) for n in names}


def taylor(model: Detector, batches: Iterable, *, max_batches: int,
           progress: Progress | None = None) -> dict[str, Tensor]:
    """Mean over batches of |w · ∂L/∂w| (the model stays in eval mode)."""
    names = model.prunable()
    params = dict(model.named_parameters())
    totals = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    model.eval()
    count = 0
    for images, targets, _ in batches:
        if count >= max_batches:
            break
        device = params[names[0]].device
        model.zero_grad(set_to_none=True)
        loss, _ = model.loss(model(images.to(device), [t.geometry for t in targets]), targets)
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


# ------------------------------------------------------------------------------- the command


def score(ck: Checkpoint, method: str, *, data: str | None = None, images: str | None = None,
          ratio: float = 0.5, steps: int = 100, lr: float = 0.1, granularity: str = "weight",
          scope: str = "layer", adv: str = "none", eps: float = 0.05, alpha: float = 0.02,
          adv_steps: int = 5, baseline: str = "black", batches: int = 16,
          batch_size: int | None = None, workers: int = 1, seed: int = 0,
          device: str = "auto", threads: int | None = None,
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
        threads: CPU threads (default: unchanged).
        progress: ``progress(done, total)`` callback.
    """
    if method not in METHODS:
        raise PrunekitError(f"--method {method!r} is unknown; use one of {', '.join(METHODS)}")
    check_granularity(granularity, scope)
    if method in NEEDS_DATA and data is None:
        raise PrunekitError(f"--method {method} needs training images: give --data train.json")
    if method == "hydra" and not 0 <= ratio < 1:
        raise PrunekitError(f"--ratio must lie in [0, 1), got {ratio}")
    if batch_size is None:
        batch_size = 4 if method == "deeplift" else 32
    if steps < 1 or batches < 1 or batch_size < 1:
        raise PrunekitError("--steps, --batches and --batch-size must be at least 1")
    skeleton = ck.skeleton()
    refused = skeleton.refused_scores()
    if method in refused:
        raise PrunekitError(f"--method {method}: {refused[method]}")
    set_threads(threads)
    args: dict[str, Any] = {"method": method, "data": data, "seed": seed}
    names = skeleton.prunable()
    if method == "magnitude":
        scores = magnitude(ck.state, names)
    elif method == "l1-filter":
        scores = l1_filter(ck.state, names)
    elif method == "random":
        scores = random_scores(ck.state, names, seed)
    else:
        scores = _data_scores(ck, method, args, data=data, images=images, ratio=ratio,
                              steps=steps, lr=lr, granularity=granularity, scope=scope, adv=adv,
                              eps=eps, alpha=alpha, adv_steps=adv_steps, baseline=baseline,
                              batches=batches, batch_size=batch_size, workers=workers,
                              seed=seed, device=device, progress=progress)
    out = copy.copy(ck)
    out.scores = {n: s.float().contiguous() for n, s in scores.items()}
    out.history = list(ck.history)
    return out.add_history("score", args)


def _data_scores(ck: Checkpoint, method: str, args: dict[str, Any], *, data: str,
                 images: str | None, ratio: float, steps: int, lr: float, granularity: str,
                 scope: str, adv: str, eps: float, alpha: float, adv_steps: int, baseline: str,
                 batches: int, batch_size: int, workers: int, seed: int, device: str,
                 progress: Progress | None) -> dict[str, Tensor]:
    """Scores that need the model run on data (``taylor``, ``deeplift``, ``hydra``); records
    their settings in ``args``."""
    from prunekit.data.coco import CocoDetection, EpochBatches, loader

    dev = resolve_device(device)
    model = ck.build().to(dev)
    augment = method == "hydra"
    dataset = CocoDetection(data, model.transform, images=images, classes=model.classes,
                            augment=augment, cache=method == "hydra")
    size = min(batch_size, len(dataset))
    n = steps if method == "hydra" else batches
    batch_iter = loader(dataset, size, workers=workers,
                        batch_sampler=EpochBatches(len(dataset), size, seed, 0, n))
    if method == "taylor":
        args.update(batches=n, batch_size=size)
        return taylor(model, batch_iter, max_batches=n, progress=progress)
    if method == "deeplift":
        from prunekit.deeplift import deeplift_scores

        args.update(batches=n, batch_size=size, baseline=baseline)
        return deeplift_scores(model, _counting(batch_iter, n, progress), baseline=baseline,
                               max_batches=n, device=dev)
    from prunekit.hydra import hydra

    args.update(ratio=ratio, steps=steps, lr=lr, granularity=granularity, scope=scope, adv=adv,
                eps=eps, alpha=alpha, adv_steps=adv_steps, batch_size=size)
    return hydra(model, batch_iter, ratio=ratio, steps=steps, lr=lr, granularity=granularity,
                 scope=scope, adv=adv, eps=eps, alpha=alpha, adv_steps=adv_steps,
                 masks=ck.masks, seed=seed, progress=progress)


def _counting(batches: Iterable, total: int, progress: Progress | None):
    for k, batch in enumerate(batches, 1):
        yield batch
        if progress:
            progress(k, total)
