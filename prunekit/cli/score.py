"""`prunekit score`: importance scores for every prunable weight."""

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
    AttackStepsOpt,
    CheckpointArg,
    DeviceOpt,
    EpsOpt,
    OutputOpt,
    SeedOpt,
    ThreadsOpt,
    WorkersOpt,
    attack_config,
    given,
    refuse_flags,
)

EXAMPLE = """Examples:

  prunekit score --method deeplift robust.st --data data/synth/train.json -o scored.st

  prunekit score --method hydra robust.st --data data/synth/train.json --ratio 0.75 --granularity filter --adv pgd --steps 100 -o scored.st

  prunekit score --method magnitude model.st | prunekit mask --ratio 0.9 -o pruned.st
"""


# score's flags → the setting each gives (prunekit.score.USED_BY: the methods that read it).
_SETTING = {"data": "data", "images": "images", "batch_size": "batch_size",
            "workers": "workers", "batches": "batches", "baseline": "baseline", "steps": "steps",
            "lr": "lr", "ratio": "target", "granularity": "target", "scope": "target",
            "adv": "attack", "eps": "attack", "alpha": "attack", "attack_steps": "attack"}


def _refuse_unused(ctx: typer.Context, method: str) -> None:
    """A setting given on the command line that ``method`` does not read is refused, not
    ignored (``--adv pgd`` with ``--method l1-filter`` would score no more robustly)."""
    from prunekit.score import METHODS, USED_BY

    if method not in METHODS:
        return  # ScoreConfig.check names the methods
    unused = [n for n in _SETTING if method not in USED_BY[_SETTING[n]]
              and not (n == "adv" and ctx.params[n] == "none")]
    flags = given(ctx, unused)
    if flags:
        users = sorted({m for n in flags for m in USED_BY[_SETTING[n]]}, key=METHODS.index)
        refuse_flags(list(flags.values()),
                     f"with --method {method} (read by {', '.join(users)} only)")


@app.command("score", epilog=EXAMPLE)
def score_cmd(
    ctx: typer.Context,
    model: CheckpointArg = None,
    method: Annotated[str, typer.Option(help="magnitude, l1-filter, random, taylor, deeplift "
                                        "or hydra.", show_default=False)] = ...,
    data: Annotated[Path | None, typer.Option(help="Training COCO JSON (taylor, deeplift, "
                                              "hydra).", show_default=False)] = None,
    images: Annotated[Path | None, typer.Option(help="Image root for --data.",
                                                show_default=False)] = None,
    ratio: Annotated[float, typer.Option(help="HYDRA: the target pruning ratio.")] = 0.5,
    steps: Annotated[int, typer.Option(help="HYDRA: score optimisation steps.")] = 100,
    lr: Annotated[float, typer.Option(help="HYDRA: SGD learning rate.")] = 0.1,
    granularity: Annotated[str, typer.Option(help="HYDRA: mask granularity while optimising "
                                             "(weight, kernel, filter).")] = "weight",
    scope: Annotated[str, typer.Option(help="HYDRA: layer or global top-k.")] = "layer",
    adv: Annotated[str, typer.Option(help="HYDRA: optimise on adversarial examples (none, "
                                     "pgd, fgsm).")] = "none",
    eps: EpsOpt = None,
    alpha: AlphaOpt = None,
    attack_steps: AttackStepsOpt = None,
    baseline: Annotated[str, typer.Option(help="DeepLIFT reference: black, white, grey or "
                                          "blur.")] = "black",
    batches: Annotated[int, typer.Option(help="Calibration batches (taylor, deeplift).")] = 16,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (default 32; 4 for "
                                                   "deeplift).", show_default=False)] = None,
    workers: WorkersOpt = 1,
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    output: OutputOpt = None,
) -> None:
    """Add scores.<param> for every conv and linear weight to the checkpoint. Frozen weights
    (an imported model's frozen backbone) are scored too; a weight that gets no gradient is
    left unpruned, and the command says so."""
    from prunekit.errors import PrunekitError
    from prunekit.mask import PruneConfig
    from prunekit.score import ScoreConfig, score

    if adv not in ("none", "pgd", "fgsm"):
        raise PrunekitError(f"--adv {adv!r} is unknown; use none, pgd or fgsm")
    _refuse_unused(ctx, method)
    config = ScoreConfig(method=method, data=str(data) if data else None,
                         images=str(images) if images else None, batches=batches,
                         batch_size=batch_size, steps=steps, lr=lr, baseline=baseline,
                         workers=workers, seed=seed).check()
    target = PruneConfig(ratio=ratio, granularity=granularity, scope=scope).check()
    attack = attack_config(adv, method_flag="--adv", steps_flag="--attack-steps", eps=eps,
                           alpha=alpha, steps=attack_steps)
    check_output(output, what="a checkpoint")
    ck = read_checkpoint(model)
    with progress_bar("score") as bar:
        task = bar.add_task(f"score {method}", total=None, info="")
        out = score(ck, config, target=target, attack=attack, device=device, threads=threads,
                    progress=lambda d, t: bar.update(task, completed=d, total=t))
    unscored = out.history[-1]["args"]["unscored"]
    if unscored:
        console.print(f"left unpruned: {len(unscored)} weights got no gradient (they take no "
                      f"part in the loss), e.g. {unscored[0]}", highlight=False)
    write_checkpoint(out, output)
