"""A training run's settings as one value: `prunekit finetune`'s flags, one to one."""

from __future__ import annotations

from dataclasses import dataclass, fields

from prunekit.errors import PrunekitError

# Settings a resumed run may change: they do not change the weights of any step.
RESUMABLE = ("workers", "val", "eval_every", "save_every")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the attack, if any, is its own value: :class:`prunekit.attack.AttackConfig`).

    Built once by the command line (or a grid cell), passed down whole, recorded whole in the
    output's history and in the training-state file (a resumed run must match it).

    Attributes:
        data: training COCO JSON.
        steps: optimisation steps (or ``epochs``; steps wins when both are given).
        epochs: passes over the data.
        batch_size: images per step (the global batch under torchrun).
        lr: peak learning rate (AdamW).
        weight_decay: decoupled weight decay on conv and linear weights.
        warmup: warm-up steps (None: 3 % of the run, at least 1).
        augment: flip / scale / translate / brightness augmentation.
        grey: switch the model's input to grey (True) or colour (False); None keeps it.
        img_size: change the input size; None keeps it.
        adv_mix: weight of the adversarial loss in each step (with an attack).
        images: image root (None: the JSON's folder).
        val: validation COCO JSON for the learning curve.
        eval_every: steps between validation evaluations (0: only at the end, with ``val``).
        save_every: steps between saves of the training state.
        bn_batches: batches over which BatchNorm statistics are re-estimated for the final
            weights (0: keep the running averages).
        workers: DataLoader worker processes.
        seed: seed for batch order, augmentation and attacks.
    """

    data: str
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int | None = None
    augment: bool = True
    grey: bool | None = None
    img_size: int | None = None
    adv_mix: float = 0.5
    images: str | None = None
    val: str | None = None
    eval_every: int = 0
    save_every: int = 200
    bn_batches: int = 16
    workers: int = 1
    seed: int = 0

    def check(self, world: int = 1) -> TrainConfig:
        """Refuse settings that cannot train (``world``: the processes sharing the batch)."""
        if self.batch_size < 1:
            raise PrunekitError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.batch_size % world:
            raise PrunekitError(f"--batch-size {self.batch_size} (the global batch) does not "
                                f"split evenly over {world} processes; use a multiple of "
                                f"{world}")
        if self.lr <= 0:
            raise PrunekitError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.adv_mix <= 1:
            raise PrunekitError(f"--adv-mix must lie in [0, 1], got {self.adv_mix}")
        if not self.weight_decay >= 0:
            raise PrunekitError(f"--weight-decay must be at least 0, got {self.weight_decay}")
        for flag, value, zero in (("--warmup", self.warmup, "no warm-up"),
                                  ("--eval-every", self.eval_every, "only at the end"),
                                  ("--save-every", self.save_every, "no saves before the end"),
                                  ("--bn-batches", self.bn_batches, "off")):
            if value is not None and value < 0:
                raise PrunekitError(f"{flag} must be at least 0 ({zero}), got {value}")
        if self.steps is None:
            if self.epochs is None:
                raise PrunekitError("how long? give --epochs E or --steps S")
            if not self.epochs > 0:
                raise PrunekitError(f"--epochs must be positive, got {self.epochs}")
        elif self.steps < 1:
            raise PrunekitError(f"--steps must be at least 1, got {self.steps}")
        return self

    def differences(self, other: dict) -> list[str]:
        """The settings (by name) in which ``other`` (a recorded config) differs from this one,
        those a resumed run may change left out."""
        return [f.name for f in fields(self) if f.name not in RESUMABLE
                and other.get(f.name) != getattr(self, f.name)]
