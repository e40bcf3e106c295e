"""A training run from its set-up to its output checkpoint (the package docstring,
:mod:`prunekit.finetune`, describes the recipe; one step is :mod:`prunekit.finetune.step`).

A run is set up once (:func:`setup`: the model with its input as asked and its masks applied,
the data, the optimiser, the EMA, the training attack, the pruner of a gradual schedule),
stepped by :func:`loop` (which saves the training state every ``save_every`` steps and at a
deferred interrupt) and finished by :func:`finish` (EMA weights, masks, BatchNorm statistics
measured anew, the history entry, compaction when asked).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.attack import AttackConfig
from prunekit.checkpoint import Checkpoint
from prunekit.distributed import Session
from prunekit.errors import PrunekitError
from prunekit.finetune import ranks, state
from prunekit.finetune.config import TrainConfig
from prunekit.finetune.interrupts import ForcedInterrupt, StepBoundaryInterrupt
from prunekit.finetune.step import EMA, apply_masks, lr_at, recalibrate_bn, train_step
from prunekit.mask import PruneConfig
from prunekit.models import registry
from prunekit.models.base import Detector

Progress = Callable[[int, int, dict[str, float]], None]


# -------------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What a run trains, and with what: set up once, then stepped by the loop.

    ``steps`` and ``warmup`` are the configuration's, resolved (epochs into steps, the default
    warm-up); ``recorded`` is the configuration as the history and the state file hold it."""

    ck: Checkpoint
    config: TrainConfig
    attack: AttackConfig | None
    steps: int
    warmup: int
    model: Detector
    dataset: Any
    device: torch.device
    masks: dict[str, Tensor]
    optimizer: torch.optim.Optimizer
    ema: EMA
    state_path: Path | None
    session: Session = field(default_factory=Session)
    net: nn.Module | None = None
    log: Path | None = None
    adversary: Callable | None = None
    autocast: torch.autocast | None = None
    start: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    prune: PruneConfig | None = None
    pruner: Any = None  # a prunekit.schedule.Pruner, with ``prune``

    @property
    def recorded(self) -> dict[str, Any]:
        out = {"train": asdict(self.config),
               "attack": asdict(self.attack) if self.attack is not None else None}
        if self.prune is not None:  # absent otherwise: state files of runs before it match
            out["prune"] = asdict(self.prune)
        return out

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """How a recorded configuration differs from this run's (what ``--resume`` refuses)."""
        mine = self.recorded
        found = [f"{k}: {saved.get('train', {}).get(k)!r} then, "
                 f"{mine['train'][k]!r} now" for k in self.config.differences(
                     saved.get("train") or {})]
        if saved.get("attack") != mine["attack"]:
            found.append(f"the attack: {saved.get('attack')!r} then, {mine['attack']!r} now")
        if saved.get("prune") != mine.get("prune"):
            found.append(f"the pruning: {saved.get('prune')!r} then, {mine.get('prune')!r} now")
        return found

    def prune_if_due(self, step: int) -> None:
        """Before optimiser step ``step``: the schedule's new masks, applied, when due."""
        if self.pruner is None or not self.pruner.due(step):
            return
        new = self.pruner.update(self.model, step, self.masks)
        self.masks = {k: v.to(self.device) for k, v in new.items()}
        apply_masks(self.model, self.masks)


def setup(ck: Checkpoint, config: TrainConfig, attack: AttackConfig | None,
          session: Session, state_file: Path | None, prune: PruneConfig | None = None) -> Run:
    """The model (input changed as asked, masks applied, on its device), the data, the
    resolved step counts, the optimiser, the EMA, the training attack and the pruner."""
    from prunekit.data.coco import CocoDetection

    dev = session.device
    ck = copy.copy(ck)
    if config.grey is not None or config.img_size is not None:
        colour = None if config.grey is None else ("grey" if config.grey else "rgb")
        ck.input = registry.get(ck.family).input_spec(ck.input, size=config.img_size,
                                                      colour=colour)
    model = ck.build()
    dataset = CocoDetection(config.data, model.transform, images=config.images,
                            classes=model.classes, augment=config.augment, cache=True)
    if len(dataset) < config.batch_size:
        raise PrunekitError(f"{config.data} has {len(dataset)} images, fewer than --batch-size "
                            f"{config.batch_size}; lower the batch size")
    steps = config.steps if config.steps is not None else \
        max(1, int(round(config.epochs * (len(dataset) // config.batch_size))))
    warmup = max(1, int(0.03 * steps)) if config.warmup is None else config.warmup
    if warmup > steps:
        raise PrunekitError(f"--warmup {warmup} is longer than the run ({steps} steps): the "
                            f"learning rate would never reach --lr; give --warmup {steps} or "
                            f"fewer")
    model = model.to(dev)
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    masks = {k: v.bool().to(dev) for k, v in ck.masks.items()}
    apply_masks(model, masks)
    optimizer = torch.optim.AdamW(model.param_groups(config.weight_decay), lr=config.lr,
                                  betas=(0.9, 0.999))
    run = Run(ck=ck, config=config, attack=attack, steps=steps, warmup=warmup, model=model,
              dataset=dataset, device=dev, masks=masks, optimizer=optimizer,
              ema=EMA(model, steps), state_path=state_file, session=session, prune=prune)
    if prune is not None:
        from prunekit.schedule import pruner_for

        run.pruner = pruner_for(ck, model, prune, steps)
    if attack is not None:
        from prunekit.attack import training_attack

        run.adversary = training_attack(attack)
    if dev.type == "cuda":
        run.autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    return run


def resume(run: Run) -> None:
    """Continue ``run`` from its state file (refused when it was started otherwise)."""
    run.start, run.ema.updates, extra = state.load(run.state_path, run.differences, run.model,
                                                   run.ema.model, run.optimizer)
    masks = {k[5:]: v.bool().to(run.device) for k, v in extra.items() if k.startswith("mask.")}
    if masks:  # the masks in force when it stopped (a schedule's, or the checkpoint's)
        run.masks = masks
        apply_masks(run.model, masks)
    if run.pruner is not None:
        run.pruner.load_state_dict({k[7:]: v.to(run.device) for k, v in extra.items()
                                    if k.startswith("pruner.")})


def _save(run: Run, step: int) -> None:
    extra = {f"mask.{k}": v.to(torch.uint8) for k, v in run.masks.items()}
    if run.pruner is not None:
        extra.update({f"pruner.{k}": v for k, v in run.pruner.state_dict().items()})
    state.save(run.state_path, run.recorded, step, run.model, run.ema.model, run.ema.updates,
               run.optimizer, {"arch": run.ck.arch, "input": run.ck.input}, extra)


def _fingerprint(run: Run) -> list[int]:
    return ranks.fingerprint(run.model, run.ema.model, run.masks)


def loop(run: Run, progress: Progress | None) -> int:
    """Train from ``run.start`` to the last step; Ctrl-C saves the state at a step boundary.

    Returns:
        The number of steps done.
    """
    from prunekit.data.coco import EpochBatches, loader

    config, model, optimizer, dev, s = run.config, run.model, run.optimizer, run.device, \
        run.session
    steps, seed = run.steps, config.seed
    batches = loader(run.dataset, config.batch_size // s.world, workers=config.workers,
                     seed=seed, batch_sampler=EpochBatches(len(run.dataset), config.batch_size,
                                                           seed, run.start, steps,
                                                           rank=s.rank, world=s.world))
    step = run.start
    interrupt = StepBoundaryInterrupt(terminate=not s.distributed)
    try:
        with interrupt:
            for images_b, targets, _ in batches:
                # Each rank attacks its own share of the batch: a random start of its own.
                torch.manual_seed((seed * 1_000_003 + step) * s.world + s.rank)
                lr = lr_at(step, steps, config.lr, run.warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                x = images_b.to(dev, non_blocking=True)
                if dev.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                run.prune_if_due(step)
                parts = train_step(model, x, targets, optimizer, adv=run.adversary,
                                   adv_mix=config.adv_mix, masks=run.masks,
                                   autocast=run.autocast, net=run.net,
                                   scale=s.world if model.loss_sums_batch else 1.0,
                                   observe=run.pruner.observe if run.pruner else None)
                s.broadcast_buffers(model)
                run.ema.update(model)
                step += 1
                parts = s.mean(parts)
                if config.val is not None and config.eval_every and \
                        step % config.eval_every == 0 and step < steps:
                    if s.main:
                        run.curve.append({"step": step, **validate(run.ema.model, config.val,
                                                                   config.images, dev)})
                        parts.update({k: v for k, v in run.curve[-1].items() if k != "step"})
                    s.barrier()
                if run.log is not None:
                    ranks.log_step(run.log, s, _fingerprint(run), step, lr, parts)
                if progress is not None and s.main:
                    progress(step, steps, parts)
                if run.state_path is not None and config.save_every and \
                        step % config.save_every == 0 and step < steps:
                    ranks.check(s, _fingerprint(run), step)
                    if s.main:
                        _save(run, step)
                    s.barrier()
                if s.any(interrupt.requested) and step < steps:
                    raise KeyboardInterrupt
    except (KeyboardInterrupt, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not interrupt.requested:
            raise  # a real failure; with Ctrl-C pending it is a DataLoader worker that stopped
        _interrupted(run, step, forced=isinstance(e, ForcedInterrupt))
    return step


def _interrupted(run: Run, step: int, *, forced: bool) -> None:
    """Save the state of an interrupted run (when there is a state file) and say how to go on."""
    path = run.state_path
    if path is None:
        raise KeyboardInterrupt from None
    if forced:
        raise PrunekitError(f"interrupted mid-step; {path} keeps the last periodic state, if "
                            f"any: run the same command with --resume to continue from it") \
            from None
    if run.session.main:
        _save(run, step)
    run.session.barrier()
    raise PrunekitError(f"interrupted at step {step}/{run.steps}; the training state is in "
                        f"{path}: run the same command with --resume to continue") from None


def finish(run: Run, step: int, extra: dict[str, Any]) -> Checkpoint | None:
    """The output checkpoint: EMA weights, masks re-applied, BatchNorm statistics measured
    anew, the last validation, and the history entry (the configuration whole, then
    ``extra`` and what was resolved); the state file is removed. With several processes only
    rank 0 does this (the others return None and wait for it to write)."""
    from prunekit.data.coco import EpochBatches, loader

    if run.session.distributed:
        ranks.check(run.session, _fingerprint(run), step)
        if not run.session.main:
            return None
    config = run.config
    final = run.ema.model
    apply_masks(final, run.masks)
    if config.bn_batches:
        # The EMA's running statistics average those of many past weights; measure them anew.
        recalibrate_bn(final, loader(run.dataset, config.batch_size, workers=0,
                                     batch_sampler=EpochBatches(len(run.dataset),
                                                                config.batch_size,
                                                                config.seed + 7, 0,
                                                                config.bn_batches)),
                       config.bn_batches)
    if config.val is not None:
        run.curve.append({"step": step, **validate(final, config.val, config.images,
                                                   run.device)})
    out = run.ck.with_model(final.to("cpu").to(memory_format=torch.contiguous_format))
    out.masks = {k: v.cpu() for k, v in run.masks.items()}
    out.scores = {}
    args = {**run.recorded, **extra, "processes": run.session.world,
            "resolved": {"steps": run.steps, "warmup": run.warmup,
                         "device": run.device.type},
            "resumed_from": run.start or None}
    if run.curve:
        args["curve"] = run.curve
    if run.state_path is not None and run.state_path.exists():
        os.unlink(run.state_path)
    out = out.add_history("finetune", args)
    if run.prune is not None and run.prune.compact:
        from prunekit.mask import compact_checkpoint

        out = compact_checkpoint(out)
    return out


def validate(model: Detector, val: str | Path, images, dev) -> dict[str, float]:
    """mAP of the model on a validation set at confidence 0.001 (the learning curve)."""
    from prunekit.data.coco import CocoDetection, loader
    from prunekit.detect import category_ids, detect, to_frame
    from prunekit.evaluate import evaluate

    was_training = model.training
    ds = CocoDetection(val, model.transform, images=images, classes=model.classes)
    results = detect(model, loader(ds, 32), conf=0.001, device=dev)
    m = evaluate(to_frame(results, category_ids(model.classes, val)), val, per_class=False)
    model.train(was_training)
    return {"map": m["map"], "map50": m["map50"]}
