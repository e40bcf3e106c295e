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

**Frozen parameters** (``requires_grad`` off: an imported model's frozen backbone) are scored
like any other, from their weights and from their gradients, which scoring asks for (the
parameters are unfrozen for the scoring pass only, and frozen again after; nothing is trained).
A prunable weight that still gets no gradient (it does not take part in the loss) has no
score: it is left unpruned, ``score`` says so, and records it (``unscored`` in the history),
and ``mask`` leaves it whole.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from prunekit.attack import AttackConfig
from prunekit.checkpoint import Checkpoint
from prunekit.deeplift import check_baseline
from prunekit.device import resolve_device, set_threads
from prunekit.errors import PrunekitError
from prunekit.mask import PruneConfig
from prunekit.models.base import Detector

METHODS = ("magnitude", "l1-filter", "random", "taylor", "deeplift", "hydra")
NEEDS_DATA = ("taylor", "deeplift", "hydra")
# The methods that read each setting (ScoreConfig's fields; ``target`` and ``attack``, HYDRA's
# own values); the others ignore it, so ``score`` refuses one given to them.
USED_BY: dict[str, tuple[str, ...]] = {
    "data": NEEDS_DATA, "images": NEEDS_DATA, "batch_size": NEEDS_DATA, "workers": NEEDS_DATA,
    "batches": ("taylor", "deeplift"), "baseline": ("deeplift",), "steps": ("hydra",),
    "lr": ("hydra",), "target": ("hydra",), "attack": ("hydra",)}
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
    """Mean over batches of |w · ∂L/∂w| (the model stays in eval mode; frozen weights get
    their gradient too, and weights without one get no score)."""
    names = model.prunable()
    params = dict(model.named_parameters())
    totals = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    seen: set[str] = set()
    model.eval()
    count = 0
    with _unfrozen([params[n] for n in names]):
        for images, targets, _ in batches:
            if count >= max_batches:
                break
            device = params[names[0]].device
            model.zero_grad(set_to_none=True)
            loss, _ = model.loss(model(images.to(device), [t.geometry for t in targets]),
                                 targets)
            loss.backward()
            for n in names:
                if params[n].grad is not None:
                    totals[n] += (params[n].detach() * params[n].grad).abs().float()
                    seen.add(n)
            count += 1
            if progress:
                progress(count, max_batches)
        model.zero_grad(set_to_none=True)
    if not count:
        raise PrunekitError("no calibration batches: the dataset is empty")
    return {n: (t / count).cpu() for n, t in totals.items() if n in seen}


@contextmanager
def _unfrozen(params: list[torch.nn.Parameter]):
    """Gradients for these parameters while scoring, ``requires_grad`` as it was after."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


# ------------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class ScoreConfig:
    """How to score, one value (``prunekit score``'s flags; HYDRA's target and attack are
    their own values, :class:`~prunekit.mask.PruneConfig` and
    :class:`~prunekit.attack.AttackConfig`), recorded whole in the output's history.

    Attributes:
        method: one of :data:`METHODS`.
        data: training COCO JSON (for ``taylor``, ``deeplift``, ``hydra``).
        images: image root for ``data``.
        batches: calibration batches for ``taylor`` and ``deeplift``.
        batch_size: images per batch (None: 32; 4 for ``deeplift``, whose contribution is
            summed over a batch before its absolute value is taken, so small batches keep
            opposite contributions of different images from cancelling).
        steps: HYDRA's optimisation steps.
        lr: HYDRA's learning rate.
        baseline: DeepLIFT's reference input (``black``, ``white``, ``grey``, ``blur``).
        workers: DataLoader workers.
        seed: seed for ``random``, the batch order and attacks.
    """

    method: str
    data: str | None = None
    images: str | None = None
    batches: int = 16
    batch_size: int | None = None
    steps: int = 100
    lr: float = 0.1
    baseline: str = "black"
    workers: int = 1
    seed: int = 0

    def check(self) -> ScoreConfig:
        if self.method not in METHODS:
            raise PrunekitError(f"--method {self.method!r} is unknown; use one of "
                                f"{', '.join(METHODS)}")
        if self.method in NEEDS_DATA and self.data is None:
            raise PrunekitError(f"--method {self.method} needs training images: give --data "
                                f"train.json")
        for flag, value in (("--steps", self.steps), ("--batches", self.batches),
                            ("--batch-size", self.batch_size)):
            if value is not None and value < 1:
                raise PrunekitError(f"{flag} must be at least 1, got {value}")
        if not self.lr > 0:
            raise PrunekitError(f"--lr must be positive, got {self.lr:g}")
        check_baseline(self.baseline)
        return self


def score(ck: Checkpoint, config: ScoreConfig | str, *, target: PruneConfig | None = None,
          attack: AttackConfig | None = None, device: str = "auto",
          threads: int | None = None, progress: Progress | None = None) -> Checkpoint:
    """Add ``scores.<name>`` for every prunable weight to a checkpoint.

    Args:
        ck: the checkpoint.
        config: how to score (a method's name stands for ``ScoreConfig(method=name)``).
        target: HYDRA's target pruning (ratio, granularity, scope; default ratio 0.5 of
            weights, per layer); ignored by the other methods.
        attack: HYDRA on adversarial examples; ignored by the other methods.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads (default: unchanged).
        progress: ``progress(done, total)`` callback.
    """
    if isinstance(config, str):
        config = ScoreConfig(method=config)
    config.check()
    hydra = config.method == "hydra"
    target = (target or PruneConfig(ratio=0.5)).check() if hydra or target else None
    if hydra and attack is not None:
        attack.check()
    skeleton = ck.skeleton()
    refused = skeleton.refused_scores()
    if config.method in refused:
        raise PrunekitError(f"--method {config.method}: {refused[config.method]}")
    set_threads(threads)
    names = skeleton.prunable()
    args: dict[str, Any] = {"score": asdict(config),
                            "target": asdict(target) if hydra else None,
                            "attack": asdict(attack) if hydra and attack else None,
                            "device": device, "threads": threads}
    if config.method == "magnitude":
        scores = magnitude(ck.state, names)
    elif config.method == "l1-filter":
        scores = l1_filter(ck.state, names)
    elif config.method == "random":
        scores = random_scores(ck.state, names, config.seed)
    else:
        scores = _data_scores(ck, config, target, attack if hydra else None, args, device,
                              progress)
    args["unscored"] = [n for n in names if n not in scores]
    out = copy.copy(ck)
    out.scores = {n: s.float().contiguous() for n, s in scores.items()}
    out.history = list(ck.history)
    return out.add_history("score", args)


def _data_scores(ck: Checkpoint, config: ScoreConfig, target: PruneConfig | None,
                 attack: AttackConfig | None, args: dict[str, Any], device: str,
                 progress: Progress | None) -> dict[str, Tensor]:
    """Scores that need the model run on data (``taylor``, ``deeplift``, ``hydra``); records
    what they resolved in ``args``."""
    from prunekit.data.coco import CocoDetection, EpochBatches, loader

    method = config.method
    dev = resolve_device(device)
    model = ck.build().to(dev)
    dataset = CocoDetection(config.data, model.transform, images=config.images,
                            classes=model.classes, augment=method == "hydra",
                            cache=method == "hydra")
    size = config.batch_size or (4 if method == "deeplift" else 32)
    size = min(size, len(dataset))
    n = config.steps if method == "hydra" else config.batches
    batch_iter = loader(dataset, size, workers=config.workers,
                        batch_sampler=EpochBatches(len(dataset), size, config.seed, 0, n))
    args["resolved"] = {"batch_size": size}
    if method == "taylor":
        return taylor(model, batch_iter, max_batches=n, progress=progress)
    if method == "deeplift":
        from prunekit.deeplift import deeplift_scores

        return deeplift_scores(model, _counting(batch_iter, n, progress),
                               baseline=config.baseline, max_batches=n, device=dev)
    from prunekit.hydra import hydra

    return hydra(model, batch_iter, target, steps=config.steps, lr=config.lr, attack=attack,
                 masks=ck.masks, seed=config.seed, progress=progress)


def _counting(batches: Iterable, total: int, progress: Progress | None):
    for k, batch in enumerate(batches, 1):
        yield batch
        if progress:
            progress(k, total)
