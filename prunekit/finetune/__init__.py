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

The settings are one value, :class:`TrainConfig` (and the attack's, an
:class:`~prunekit.attack.AttackConfig`), recorded whole in the output's history. The package is
split by concern: :mod:`~prunekit.finetune.step` (one step, the schedule, the EMA),
:mod:`~prunekit.finetune.loop` (a run: set-up, loop, output),
:mod:`~prunekit.finetune.state` (the training-state file),
:mod:`~prunekit.finetune.interrupts` (stopping at a step boundary) and
:mod:`~prunekit.finetune.ranks` (several processes as one).
"""


from __future__ import annotations

from pathlib import Path

from prunekit.attack import AttackConfig
from prunekit.checkpoint import Checkpoint
from prunekit.device import resolve_device, set_threads
from prunekit.distributed import Session, wrap
from prunekit.errors import PrunekitError
from prunekit.finetune import loop as _loop
from prunekit.finetune import ranks
from prunekit.finetune.config import TrainConfig
from prunekit.finetune.loop import Progress
from prunekit.finetune.step import EMA, apply_masks, lr_at, recalibrate_bn, train_step

__all__ = ["EMA", "Progress", "TrainConfig", "apply_masks", "finetune", "lr_at",
           "recalibrate_bn", "train_step"]


def finetune(ck: Checkpoint, config: TrainConfig, attack: AttackConfig | None = None, *,
             device: str = "auto", threads: int | None = None,
             state_file: str | Path | None = None, resume: bool = False,
             log: str | Path | None = None, session: Session | None = None,
             progress: Progress | None = None) -> Checkpoint | None:
    """Train a checkpoint on a COCO dataset and return the trained checkpoint (EMA weights).

    With several processes (``session``), rank 0 returns the checkpoint and the others None.

    Args:
        ck: the starting checkpoint; its masks stay applied.
        config: how to train.
        attack: adversarial training's attack (``pgd``, or ``fgsm``: FGSM with a random start);
            None trains on clean images.
        device: ``auto``, ``cpu`` or ``cuda`` (without ``session``).
        threads: CPU threads for torch (default: unchanged).
        state_file: where periodic training state goes (None: nowhere).
        resume: continue from ``state_file``.
        log: a JSON-lines file that gets one line per step (learning rate, losses averaged over
            the ranks, and with several processes every rank's weight checksum and count of
            non-zero masked weights).
        session: the processes training together (:func:`prunekit.distributed.session`);
            None: this process alone, on ``device``.
        progress: ``progress(step, total, metrics)`` callback (called on rank 0 only).
    """
    if session is None:
        session = Session(device=resolve_device(device))
    config.check(session.world)
    if attack is not None:
        attack.check()
    if resume and state_file is None:
        raise PrunekitError("--resume needs the training state, which lives beside -o PATH; "
                            "give -o")
    if config.val is not None:  # a bad validation file would otherwise surface after training
        from prunekit.data.coco import read_json

        read_json(config.val)
    set_threads(threads)
    run = _loop.setup(ck, config, attack, session, Path(state_file) if state_file else None)
    run.log = Path(log) if log else None
    # After torchrun restarts a failed group, each process runs the same command again: go on
    # from the state the group last saved.
    if session.restarts and run.state_path is not None and run.state_path.exists():
        resume = True
    if resume:
        _loop.resume(run)
    run.net = wrap(run.model, session)
    if run.log is not None and session.main:
        ranks.start_log(run.log, run.start)
    step = _loop.loop(run, progress)
    return _loop.finish(run, step, {"device": device, "threads": threads})
