"""One training loop for every purpose: from scratch, fine-tuning, adversarial, after pruning.

Recipe: AdamW (no weight decay on BatchNorm and biases), linear warm-up then cosine decay sized
to the run, an exponential moving average (EMA) of the weights whose horizon scales with the
run's length (the EMA is what the output checkpoint holds), channels-last memory on CPU, bfloat16
autocast on CUDA. Masks in the checkpoint stay applied: gradients of pruned weights are zeroed
before each step and the weights re-zeroed after it, so they stay exactly 0 and the masks do
not change.

Determinism and resume: batch order and each image's augmentation are functions of (seed,
epoch, position) alone, and each step re-seeds torch's generator from (seed, step), so a run
replays bit for bit on CPU. The training state (model, EMA, optimizer, step) is saved every
``save_every`` steps and on interruption to a state file beside the output; ``resume=True``
continues from it and gives the same final weights as an uninterrupted run.

Several processes (``torchrun``, see :mod:`prunekit.distributed`): ``batch_size`` stays the
global batch, each rank takes its contiguous share of every batch, the forward goes through
DistributedDataParallel (gradients averaged in backward; SyncBatchNorm on CUDA only), and rank
0's BatchNorm statistics are copied to every rank after each step, so the model, the optimiser
and the EMA are identical everywhere (checked by exact weight checksums at every state save and,
with a training log, every step). Training attacks go through the unwrapped model with
``torch.autograd.grad`` on the images, so they never trigger gradient all-reduces, and every rank
runs the same number of attack steps. Only rank 0 writes (state files, the log, the output);
the others wait. A stop (Ctrl-C, or SIGTERM from a scheduler) is agreed by all ranks at a step
boundary; after torchrun restarts a failed group, training resumes from the state file.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit import checkpoint
from prunekit.checkpoint import Checkpoint
from prunekit.device import resolve_device, set_threads
from prunekit.distributed import Session, checksum, wrap
from prunekit.errors import PrunekitError
from prunekit.models import registry
from prunekit.models.base import Detector, Target

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    """The resolved training arguments (recorded in the checkpoint's history)."""

    data: str
    steps: int
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 0
    workers: int = 1
    seed: int = 0
    adv: str = "none"
    adv_mix: float = 0.5
    eps: float = 0.05
    alpha: float = 0.02
    adv_steps: int = 5
    augment: bool = True
    images: str | None = None


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


class _StepBoundaryInterrupt:
    """Defer Ctrl-C (SIGINT) or a scheduler's SIGTERM to the end of the training step it arrives
    in.

    A KeyboardInterrupt raised mid-step (after the optimiser step, before the EMA update or the
    step count) would save a state that no uninterrupted run passes through, and ``--resume``
    would then diverge from it. The first signal only sets ``requested``; the loop saves
    the state and stops at the next step boundary (Slurm sends SIGTERM at a job's time limit,
    SIGKILL 30 s later by default). A second signal interrupts at once (the last periodic state
    is kept). Only the main thread can own signal handlers; elsewhere this does nothing.

    Under torchrun only Ctrl-C is deferred: torchrun stops its workers with SIGTERM when one of
    them has failed, and the others, blocked in a collective with the dead one, would never
    reach a step boundary; they stop at once and the periodic state is what a restart resumes.
    """

    def __init__(self, *, terminate: bool = True) -> None:
        self.requested = False
        self.terminate = terminate
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StepBoundaryInterrupt:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM)[:2 if self.terminate else 1]:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise _ForcedInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


class _ForcedInterrupt(KeyboardInterrupt):
    """A second Ctrl-C: stop now, mid-step, without saving a state."""


# ------------------------------------------------------------------------------ state files


def _save_state(path: Path, config: TrainConfig, step: int, model: nn.Module, ema: EMA,
                optimizer: torch.optim.Optimizer, ck: Checkpoint) -> None:
    tensors: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous().clone()
    for k, v in ema.model.state_dict().items():
        tensors[f"ema.{k}"] = v.detach().cpu().contiguous().clone()
    opt = optimizer.state_dict()
    opt_meta = {"param_groups": opt["param_groups"], "state": {}}
    for pid, st in opt["state"].items():
        opt_meta["state"][str(pid)] = {}
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous().clone()
                opt_meta["state"][str(pid)][key] = "tensor"
            else:
                opt_meta["state"][str(pid)][key] = val
    meta = {"config": json.dumps(asdict(config), sort_keys=True), "step": str(step),
            "ema_updates": str(ema.updates), "optim": json.dumps(opt_meta),
            "checkpoint": json.dumps({"arch": ck.arch, "input": ck.input})}
    from safetensors.torch import save

    checkpoint.write_atomic(path, save(tensors, metadata=meta))


def _load_state(path: Path, config: TrainConfig, model: nn.Module, ema: EMA,
                optimizer: torch.optim.Optimizer) -> int:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        tensors = load(data)
        import struct

        n = struct.unpack("<Q", data[:8])[0]
        meta = json.loads(data[8:8 + n])["__metadata__"]
    except FileNotFoundError:
        raise PrunekitError(f"--resume: no training state at {path}; run without --resume to "
                            f"start") from None
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise PrunekitError(f"--resume: training state {path} is unreadable ({e}); delete it "
                            f"and start again") from None
    saved = json.loads(meta["config"])
    mine = asdict(config)
    diff = [k for k in mine if k not in ("workers",) and saved.get(k) != mine[k]]
    if diff:
        raise PrunekitError(f"--resume: {path} was started with other arguments ({diff[0]}: "
                            f"{saved.get(diff[0])!r} then, {mine[diff[0]]!r} now); use the "
                            f"same arguments or delete the state file")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    ema.updates = int(meta["ema_updates"])
    opt_meta = json.loads(meta["optim"])
    state = {}
    for pid, st in opt_meta["state"].items():
        state[int(pid)] = {key: tensors[f"optim.{pid}.{key}"] if val == "tensor" else val
                           for key, val in st.items()}
    optimizer.load_state_dict({"param_groups": opt_meta["param_groups"], "state": state})
    return int(meta["step"])


# -------------------------------------------------------------------------------- the loop


@dataclass
class _Run:
    """What a run trains, and with what: set up once, then stepped by the loop."""

    ck: Checkpoint
    config: TrainConfig
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
    attack: Callable | None = None
    autocast: torch.autocast | None = None
    start: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)


def finetune(ck: Checkpoint, data: str | Path, *, epochs: float | None = None,
             steps: int | None = None, batch_size: int = 32, lr: float = 2e-3,
             weight_decay: float = 0.05, warmup: int | None = None, workers: int = 1,
             images: str | Path | None = None, seed: int = 0, device: str = "auto",
             grey: bool | None = None, img_size: int | None = None, augment: bool = True,
             adv: str = "none", adv_mix: float = 0.5, eps: float = 0.05, alpha: float = 0.02,
             adv_steps: int = 5, state_file: str | Path | None = None, resume: bool = False,
             save_every: int = 200, val: str | Path | None = None, eval_every: int = 0,
             bn_batches: int = 16, threads: int | None = None, log: str | Path | None = None,
             session: Session | None = None,
             progress: Progress | None = None) -> Checkpoint | None:
    """Train a checkpoint on a COCO dataset and return the trained checkpoint (EMA weights).

    With several processes (``session``), rank 0 returns the checkpoint and the others None.

    Args:
        ck: the starting checkpoint; its masks stay applied.
        data: training COCO JSON.
        epochs: passes over the data (or give ``steps``).
        steps: optimisation steps (overrides ``epochs``).
        batch_size: images per step.
        lr: peak learning rate (AdamW).
        weight_decay: decoupled weight decay on conv and linear weights.
        warmup: warm-up steps (default 3 % of the run, at least 1).
        workers: DataLoader worker processes.
        images: image root (default: the JSON's folder).
        seed: seed for batch order, augmentation and attacks.
        device: ``auto``, ``cpu`` or ``cuda``.
        grey: switch the model's input to grey (True) or colour (False); None keeps it.
        img_size: change the input size; None keeps it.
        augment: flip / scale / translate / brightness augmentation.
        adv: ``none``, ``pgd`` or ``fgsm`` (FGSM with a random start): adversarial training.
        adv_mix: weight of the adversarial loss in each step.
        eps: L∞ radius of the training attack (images in [0, 1]).
        alpha: attack step size.
        adv_steps: PGD steps.
        state_file: where periodic training state goes (None: nowhere).
        resume: continue from ``state_file``.
        save_every: steps between state saves.
        val: validation COCO JSON for the learning curve.
        eval_every: steps between validation evaluations (0: only at the end when ``val``).
        bn_batches: batches over which BatchNorm statistics are re-estimated for the final
            weights (0: keep the running averages).
        threads: CPU threads for torch (default: unchanged).
        log: a JSON-lines file that gets one line per step (learning rate, losses averaged over
            the ranks, and with several processes every rank's weight checksum and count of
            non-zero masked weights).
        session: the processes training together (:func:`prunekit.distributed.session`);
            None: this process alone, on ``device``.
        progress: ``progress(step, total, metrics)`` callback (called on rank 0 only).
    """
    if session is None:
        session = Session(device=resolve_device(device))
    _check(batch_size=batch_size, lr=lr, adv=adv, adv_mix=adv_mix, resume=resume,
           state_file=state_file, world=session.world)
    if adv != "none" and adv_steps < 1:
        raise PrunekitError(f"--attack-steps must be at least 1, got {adv_steps}")
    if val is not None:  # a bad validation file would otherwise surface after the training
        from prunekit.data.coco import read_json

        read_json(val)
    set_threads(threads)
    run = _setup(ck, data, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
                 weight_decay=weight_decay, warmup=warmup, workers=workers, images=images,
                 seed=seed, device=device, grey=grey, img_size=img_size, augment=augment,
                 adv=adv, adv_mix=adv_mix, eps=eps, alpha=alpha, adv_steps=adv_steps,
                 state_file=state_file, session=session)
    run.log = Path(log) if log else None
    # After torchrun restarts a failed group, each process runs the same command again: go on
    # from the state the group last saved.
    if session.restarts and run.state_path is not None and run.state_path.exists():
        resume = True
    if resume:
        run.start = _load_state(run.state_path, run.config, run.model, run.ema, run.optimizer)
    run.net = wrap(run.model, session)
    if run.log is not None and session.main:
        _start_log(run.log, run.start)
    step = _loop(run, val=val, eval_every=eval_every, save_every=save_every,
                 progress=progress)
    return _finish(run, step, val=val, bn_batches=bn_batches,
                   extra={"epochs": epochs, "device": run.device.type, "grey": grey,
                          "img_size": img_size, "bn_batches": bn_batches,
                          "processes": session.world})


def _check(*, batch_size: int, lr: float, adv: str, adv_mix: float, resume: bool,
           state_file: str | Path | None, world: int = 1) -> None:
    """Refuse arguments that cannot train, before any work."""
    if batch_size < 1:
        raise PrunekitError(f"--batch-size must be at least 1, got {batch_size}")
    if batch_size % world:
        raise PrunekitError(f"--batch-size {batch_size} (the global batch) does not split "
                            f"evenly over {world} processes; use a multiple of {world}")
    if lr <= 0:
        raise PrunekitError(f"--lr must be positive, got {lr}")
    if adv not in ("none", "pgd", "fgsm"):
        raise PrunekitError(f"--adv {adv!r} is unknown; use none, pgd or fgsm")
    if not 0 <= adv_mix <= 1:
        raise PrunekitError(f"--adv-mix must lie in [0, 1], got {adv_mix}")
    if resume and state_file is None:
        raise PrunekitError("--resume needs the training state, which lives beside -o PATH; "
                            "give -o")


def _setup(ck: Checkpoint, data: str | Path, *, epochs: float | None, steps: int | None,
           batch_size: int, lr: float, weight_decay: float, warmup: int | None, workers: int,
           images: str | Path | None, seed: int, device: str, grey: bool | None,
           img_size: int | None, augment: bool, adv: str, adv_mix: float, eps: float,
           alpha: float, adv_steps: int, state_file: str | Path | None,
           session: Session) -> _Run:
    """The model (input changed as asked, masks applied, on its device), the data, the
    resolved configuration, the optimiser, the EMA and the training attack."""
    from prunekit.data.coco import CocoDetection

    dev = session.device
    ck = copy.copy(ck)
    if grey is not None or img_size is not None:
        colour = None if grey is None else ("grey" if grey else "rgb")
        ck.input = registry.get(ck.family).input_spec(ck.input, size=img_size, colour=colour)
    model = ck.build()
    dataset = CocoDetection(data, model.transform, images=images, classes=model.classes,
                            augment=augment, cache=True)
    if len(dataset) < batch_size:
        raise PrunekitError(f"{data} has {len(dataset)} images, fewer than --batch-size "
                            f"{batch_size}; lower the batch size")
    if epochs is not None and steps is None and not epochs > 0:
        raise PrunekitError(f"--epochs must be positive, got {epochs}")
    if steps is None:
        if epochs is None:
            raise PrunekitError("how long? give --epochs E or --steps S")
        steps = max(1, int(round(epochs * (len(dataset) // batch_size))))
    if steps < 1:
        raise PrunekitError(f"--steps must be at least 1, got {steps}")
    warmup = max(1, int(0.03 * steps)) if warmup is None else warmup
    config = TrainConfig(data=str(data), steps=steps, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, warmup=warmup, workers=workers, seed=seed,
                         adv=adv, adv_mix=adv_mix, eps=eps, alpha=alpha, adv_steps=adv_steps,
                         augment=augment, images=str(images) if images else None)
    model = model.to(dev)
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    masks = {k: v.bool().to(dev) for k, v in ck.masks.items()}
    apply_masks(model, masks)
    optimizer = torch.optim.AdamW(model.param_groups(weight_decay), lr=lr, betas=(0.9, 0.999))
    run = _Run(ck=ck, config=config, model=model, dataset=dataset, device=dev, masks=masks,
               optimizer=optimizer, ema=EMA(model, steps),
               state_path=Path(state_file) if state_file else None, session=session)
    if adv != "none":
        from prunekit.attack import training_attack

        run.attack = training_attack(adv, eps=eps, alpha=alpha, steps=adv_steps)
    if dev.type == "cuda":
        run.autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    return run


def _loop(run: _Run, *, val: str | Path | None, eval_every: int, save_every: int,
          progress: Progress | None) -> int:
    """Train from ``run.start`` to the last step; Ctrl-C saves the state at a step boundary.

    Returns:
        The number of steps done.
    """
    from prunekit.data.coco import EpochBatches, loader

    config, model, optimizer, dev, s = run.config, run.model, run.optimizer, run.device, \
        run.session
    steps, seed = config.steps, config.seed
    batches = loader(run.dataset, config.batch_size // s.world, workers=config.workers,
                     seed=seed, batch_sampler=EpochBatches(len(run.dataset), config.batch_size,
                                                           seed, run.start, steps,
                                                           rank=s.rank, world=s.world))
    step = run.start
    interrupt = _StepBoundaryInterrupt(terminate=not s.distributed)
    try:
        with interrupt:
            for images_b, targets, _ in batches:
                # Each rank attacks its own share of the batch: a random start of its own.
                torch.manual_seed((seed * 1_000_003 + step) * s.world + s.rank)
                lr = lr_at(step, steps, config.lr, config.warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                x = images_b.to(dev, non_blocking=True)
                if dev.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                parts = train_step(model, x, targets, optimizer, adv=run.attack,
                                   adv_mix=config.adv_mix, masks=run.masks,
                                   autocast=run.autocast, net=run.net,
                                   scale=s.world if model.loss_sums_batch else 1.0)
                s.broadcast_buffers(model)
                run.ema.update(model)
                step += 1
                parts = s.mean(parts)
                if val is not None and eval_every and step % eval_every == 0 and step < steps:
                    if s.main:
                        run.curve.append({"step": step, **_validate(run.ema.model, val,
                                                                    config.images, dev)})
                        parts.update({k: v for k, v in run.curve[-1].items() if k != "step"})
                    s.barrier()
                if run.log is not None:
                    _log_step(run, step, lr, parts)
                if progress is not None and s.main:
                    progress(step, steps, parts)
                if run.state_path is not None and save_every and step % save_every == 0 \
                        and step < steps:
                    _check_ranks(run, step)
                    if s.main:
                        _save_state(run.state_path, config, step, model, run.ema, optimizer,
                                    run.ck)
                    s.barrier()
                if s.any(interrupt.requested) and step < steps:
                    raise KeyboardInterrupt
    except (KeyboardInterrupt, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not interrupt.requested:
            raise  # a real failure; with Ctrl-C pending it is a DataLoader worker that stopped
        _interrupted(run, step, forced=isinstance(e, _ForcedInterrupt))
    return step


def _rank_state(run: _Run) -> list[int]:
    """This rank's fingerprint: weight checksum (model and EMA) and non-zero masked weights."""
    state = run.model.state_dict()
    stray = sum(int(state[k].masked_select(~m).count_nonzero()) for k, m in run.masks.items())
    return [checksum(run.model, run.ema.model), stray]


def _check_ranks(run: _Run, step: int) -> list[list[int]]:
    """Every rank's fingerprint; an error when the ranks' weights differ (they never should:
    a difference means the processes no longer train one model)."""
    ranks = run.session.gather(_rank_state(run))
    if any(r[0] != ranks[0][0] for r in ranks):
        raise PrunekitError(f"the {len(ranks)} processes hold different weights after step "
                            f"{step} (checksums {[r[0] for r in ranks]}); they no longer train "
                            f"one model: report this with the command")
    return ranks


def _start_log(path: Path, start: int) -> None:
    """A fresh training log, or, on resume, the log up to the resumed step (later lines were
    written by steps the resumed run does again)."""
    kept = []
    if start and path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start]
    from prunekit.files import write_atomic

    write_atomic(path, "".join(line + "\n" for line in kept).encode())


def _log_step(run: _Run, step: int, lr: float, parts: dict[str, float]) -> None:
    """One line of the training log (rank 0 writes, every rank contributes its fingerprint)."""
    ranks = _check_ranks(run, step) if run.session.distributed else [_rank_state(run)]
    if run.session.main:
        line = {"step": step, "lr": lr, **parts, "checksums": [r[0] for r in ranks],
                "masked_nonzero": [r[1] for r in ranks]}
        with run.log.open("a") as f:
            f.write(json.dumps(line) + "\n")


def _interrupted(run: _Run, step: int, *, forced: bool) -> None:
    """Save the state of an interrupted run (when there is a state file) and say how to go on."""
    path = run.state_path
    if path is None:
        raise KeyboardInterrupt from None
    if forced:
        raise PrunekitError(f"interrupted mid-step; {path} keeps the last periodic state, if "
                            f"any: run the same command with --resume to continue from it") \
            from None
    if run.session.main:
        _save_state(path, run.config, step, run.model, run.ema, run.optimizer, run.ck)
    run.session.barrier()
    raise PrunekitError(f"interrupted at step {step}/{run.config.steps}; the training state is "
                        f"in {path}: run the same command with --resume to continue") from None


def _finish(run: _Run, step: int, *, val: str | Path | None, bn_batches: int,
            extra: dict[str, Any]) -> Checkpoint | None:
    """The output checkpoint: EMA weights, masks re-applied, BatchNorm statistics measured
    anew, the last validation, and the history entry; the state file is removed. With several
    processes only rank 0 does this (the others return None and wait for it to write)."""
    from prunekit.data.coco import EpochBatches, loader

    if run.session.distributed:
        _check_ranks(run, step)
        if not run.session.main:
            return None
    config = run.config
    final = run.ema.model
    apply_masks(final, run.masks)
    if bn_batches:
        # The EMA's running statistics average those of many past weights; measure them anew.
        recalibrate_bn(final, loader(run.dataset, config.batch_size, workers=0,
                                     batch_sampler=EpochBatches(len(run.dataset),
                                                                config.batch_size,
                                                                config.seed + 7, 0, bn_batches)),
                       bn_batches)
    if val is not None:
        run.curve.append({"step": step, **_validate(final, val, config.images, run.device)})
    out = run.ck.with_model(final.to("cpu").to(memory_format=torch.contiguous_format))
    out.masks = {k: v.cpu() for k, v in run.masks.items()}
    out.scores = {}
    args = {**asdict(config), **extra, "resumed_from": run.start or None}
    if run.curve:
        args["curve"] = run.curve
    if run.state_path is not None and run.state_path.exists():
        os.unlink(run.state_path)
    return out.add_history("finetune", args)


def _validate(model: Detector, val: str | Path, images, dev) -> dict[str, float]:
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
