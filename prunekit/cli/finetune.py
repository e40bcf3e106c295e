"""`prunekit finetune`: train a checkpoint (from scratch, fine-tune, adversarial, after pruning)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import (
    check_output,
    console,
    progress_bar,
    read_checkpoint,
    write_checkpoint,
)
from prunekit.cli._options import (
    AlphaOpt,
    CheckpointArg,
    DeviceOpt,
    EpsOpt,
    ImgSizeOpt,
    OutputOpt,
    SeedOpt,
    ThreadsOpt,
    WorkersOpt,
    attack_config,
    refuse_given,
)
from prunekit.errors import PrunekitError

EXAMPLE = """Examples:

  prunekit finetune model.st --data data/synth/train.json --val data/synth/val.json --epochs 20 -o trained.st

  prunekit finetune trained.st --data data/synth/train.json --adv pgd --adv-mix 0.5 --steps 300 --lr 5e-4 -o robust.st

  prunekit mask scored.st --ratio 0.5 | prunekit finetune --data data/synth/train.json --steps 100 -o pruned.st

  prunekit score --method magnitude robust.st | prunekit finetune --data data/synth/train.json --steps 400 --prune-to 0.9 --schedule cubic --prune-end 300 --prune-every 20 -o sparse.st

  prunekit score --method l1-filter robust.st | prunekit finetune --data data/synth/train.json --steps 400 --prune-to 0.5 --granularity filter --prune-end 300 --compact -o small.st

  torchrun --standalone --nproc-per-node 4 -m prunekit finetune model.st --data data/synth/train.json --steps 1000 --batch-size 64 -o trained.st
"""


@app.command("finetune", epilog=EXAMPLE)
def finetune_cmd(
    ctx: typer.Context,
    model: CheckpointArg = None,
    data: Annotated[Path, typer.Option(help="Training COCO JSON.", show_default=False)] = ...,
    val: Annotated[Path | None, typer.Option(help="Validation COCO JSON for the learning "
                                             "curve.", show_default=False)] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the data.",
                                                 show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(help="Optimisation steps (instead of "
                                              "--epochs).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(help="Decoupled weight decay.")] = 0.05,
    warmup: Annotated[int | None, typer.Option(help="Warm-up steps (default 3 % of the "
                                               "run).", show_default=False)] = None,
    img_size: ImgSizeOpt = None,
    grey: Annotated[bool | None, typer.Option("--grey/--colour", help="Switch the model to "
                                              "grey or colour input (default: keep).",
                                              show_default=False)] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment",
                                          help="Flip, scale, translate, brightness.")] = True,
    adv: Annotated[str, typer.Option(help="Adversarial training: none, pgd, or fgsm (FGSM "
                                     "with random start).")] = "none",
    adv_mix: Annotated[float, typer.Option(help="Weight of the adversarial loss.")] = 0.5,
    eps: EpsOpt = None,
    alpha: AlphaOpt = None,
    attack_steps: Annotated[int | None, typer.Option("--attack-steps", "--pgd-steps",
                                                     help="PGD steps (default 5).",
                                                     show_default=False)]
    = None,
    workers: WorkersOpt = 1,
    images: Annotated[Path | None, typer.Option(help="Image root (default: the JSON's "
                                                "folder).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from "
                                         "its state file (OUTPUT.state).")] = False,
    save_every: Annotated[int, typer.Option(help="Steps between saves of the training "
                                            "state (0: none before the end).")] = 200,
    eval_every: Annotated[int, typer.Option(help="Steps between validation mAP "
                                            "evaluations (0: only at the end).")] = 0,
    bn_batches: Annotated[int, typer.Option(help="Batches to re-estimate BatchNorm statistics "
                                            "for the final weights (0: off).")] = 16,
    log: Annotated[Path | None, typer.Option("--step-log", help="One JSON line per step (learning "
                                             "rate, losses; under torchrun every rank's weight "
                                             "checksum).", show_default=False)] = None,
    prune_to: Annotated[float | None, typer.Option(
        help="Prune while training, to this fraction of units removed (by the checkpoint's "
             "score method, re-ranked at every update; masks only shrink).",
        show_default=False)] = None,
    schedule: Annotated[str, typer.Option(help="With --prune-to: one-shot, linear or cubic "
                                          "(Zhu & Gupta).")] = "cubic",
    prune_start: Annotated[int, typer.Option(help="With --prune-to: the first update's "
                                             "step.")] = 0,
    prune_end: Annotated[int | None, typer.Option(
        help="With --prune-to (linear, cubic): the last update's step, where the sparsity "
             "reaches --prune-to; before the run's end.", show_default=False)] = None,
    prune_every: Annotated[int, typer.Option(help="With --prune-to: steps between "
                                             "updates.")] = 10,
    granularity: Annotated[str, typer.Option(help="With --prune-to: weight, kernel or "
                                             "filter.")] = "weight",
    scope: Annotated[str, typer.Option(help="With --prune-to: layer or global.")] = "layer",
    compact: Annotated[bool, typer.Option("--compact", help="With --prune-to: physically "
                                          "remove the pruned filters at the end.")] = False,
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    output: OutputOpt = None,
) -> None:
    """Train a detector; masks in the checkpoint stay applied (pruned weights stay 0).

    Under torchrun, every process trains one model together (DistributedDataParallel; gloo on
    CPU, NCCL on CUDA with one GPU per process); --batch-size is the global batch; rank 0 writes.
    """
    import contextlib

    from prunekit import distributed
    from prunekit.finetune import TrainConfig, finetune

    if adv not in ("none", "pgd", "fgsm"):
        raise PrunekitError(f"--adv {adv!r} is unknown; use none, pgd or fgsm")
    if prune_to is None:
        refuse_given(ctx, ("schedule", "prune_start", "prune_end", "prune_every", "granularity",
                           "scope", "compact"), "without --prune-to RATIO")
    if adv == "none":
        refuse_given(ctx, ("adv_mix",), "without --adv pgd or fgsm")
    if val is None:
        refuse_given(ctx, ("eval_every",), "without --val (the data it evaluates on)")
    if steps is not None:
        refuse_given(ctx, ("epochs",), "with --steps (the run's length is one or the other)")
    if prune_to is not None and schedule == "one-shot":
        refuse_given(ctx, ("prune_end", "prune_every"), "with --schedule one-shot (it prunes "
                     "once, at --prune-start)")
    config = TrainConfig(
        data=str(data), steps=steps, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup=warmup, augment=augment, grey=grey, img_size=img_size,
        adv_mix=adv_mix, images=str(images) if images else None,
        val=str(val) if val else None, eval_every=eval_every, save_every=save_every,
        bn_batches=bn_batches, workers=workers, seed=seed)
    attack = attack_config(adv, method_flag="--adv", steps_flag="--attack-steps", eps=eps,
                           alpha=alpha, steps=attack_steps)
    prune = _prune_config(prune_to, schedule, prune_start, prune_end, prune_every,
                          granularity, scope, compact, steps)
    with distributed.session(device) as s:
        if s.distributed and (model is None or str(model) == "-"):
            raise PrunekitError("under torchrun, give the checkpoint as a file: standard input "
                                "reaches one process only")
        check_output(output, what="a checkpoint" if s.main else None)  # rank 0 writes
        ck = read_checkpoint(model)
        state = None
        if output is not None and str(output) != "-":
            state = output.with_name(output.name + ".state")
        bar = progress_bar("finetune") if s.main else contextlib.nullcontext()
        with bar:
            task = bar.add_task("finetune", total=None, info="") if s.main else None

            def _progress(step: int, total: int, parts: dict[str, float]) -> None:
                info = " ".join(f"{k} {v:.3f}" for k, v in parts.items() if k in
                                ("loss", "adv_loss", "map", "map50"))
                bar.update(task, completed=step, total=total, info=info)

            out = finetune(ck, config, attack, device=device, threads=threads,
                           state_file=state, resume=resume, log=log, session=s,
                           progress=_progress, prune=prune)
        if out is None:
            return  # not rank 0: it writes
        curve = out.history[-1]["args"].get("curve")
        if curve:
            console.print(f"validation: mAP {curve[-1]['map']:.4f}, mAP50 "
                          f"{curve[-1]['map50']:.4f}", highlight=False)
        write_checkpoint(out, output)


def _prune_config(prune_to: float | None, schedule: str, start: int, end: int | None,
                  every: int, granularity: str, scope: str, compact: bool,
                  steps: int | None):
    """The gradual pruning's configuration (None without --prune-to), checked before anything
    is read or written."""
    from prunekit.mask import PruneConfig
    from prunekit.schedule import Schedule

    if prune_to is None:
        return None
    # The schedule's name and target before its steps (start and end checked below).
    Schedule(prune_to, schedule, start, start).check()  # type: ignore[arg-type]
    if end is None:
        if schedule != "one-shot":
            raise PrunekitError(f"--schedule {schedule} needs --prune-end STEP (the last "
                                f"update, before the run's end)")
        end = start
    config = PruneConfig(ratio=prune_to, granularity=granularity, scope=scope, compact=compact,
                         schedule=schedule, start=start, end=end, every=every).check()
    Schedule.of(config).check(steps)
    return config
