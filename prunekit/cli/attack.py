"""`prunekit attack`: write adversarial images (PNG) and their COCO JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import console, progress_bar, read_checkpoint
from prunekit.cli._options import (
    AlphaOpt,
    CheckpointArg,
    DeviceOpt,
    EpsOpt,
    LossOpt,
    SeedOpt,
    StepsOpt,
    ThreadsOpt,
    attack_config,
)

EXAMPLE = """Examples:

  prunekit attack model.st --data data/synth/val.json -o adv/

  prunekit detect model.st --data adv/val.json --conf 0.001 | prunekit evaluate - --gt adv/val.json

  prunekit attack model.st --data data/synth/val.json --method fgsm --loss obj -o vanish/
"""


@app.command("attack", epilog=EXAMPLE)
def attack_cmd(
    model: CheckpointArg = None,
    data: Annotated[Path, typer.Option(help="COCO JSON of the images to attack.",
                                       show_default=False)] = ...,
    images: Annotated[Path | None, typer.Option(help="Image root (default: the JSON's "
                                                "folder).", show_default=False)] = None,
    method: Annotated[str, typer.Option(help="pgd or fgsm.")] = "pgd",
    eps: EpsOpt = None,
    alpha: AlphaOpt = None,
    steps: StepsOpt = None,
    loss: LossOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images attacked together.")] = 16,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder (new or "
                                         "empty).", show_default=False)] = ...,
) -> None:
    """Attack every image of a dataset; write PNGs and a COCO JSON with the same ids."""
    from prunekit.attack import attack_dataset
    from prunekit.errors import PrunekitError

    if batch_size < 1:
        raise PrunekitError(f"--batch-size must be at least 1, got {batch_size}")
    if method == "none":  # the other commands' "no attack": this command is the attack
        raise PrunekitError("--method none writes no attacked images; use pgd or fgsm")
    config = attack_config(method, method_flag="--method", eps=eps, alpha=alpha, steps=steps,
                           loss=loss)
    ck = read_checkpoint(model)
    with progress_bar("attack") as bar:
        task = bar.add_task("attack", total=None, info="")
        summary = attack_dataset(ck, data, output, config, images=images,
                                 batch_size=batch_size, device=device, threads=threads,
                                 seed=seed,
                                 progress=lambda d, t: bar.update(task, completed=d, total=t))
    console.print(f"wrote {summary['images']} images and {summary['json']}", highlight=False)
    typer.echo(json.dumps(summary))
