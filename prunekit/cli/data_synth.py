"""`prunekit data synth`: write the built-in synthetic detection dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prunekit.cli._app import data_app
from prunekit.cli._io import console
from prunekit.cli._options import SeedOpt

EXAMPLE = """Examples:

  prunekit data synth data/synth

  prunekit data synth /tmp/tiny --train 40 --val 10 --size 96 --seed 1
"""


@data_app.command("synth", epilog=EXAMPLE)
def synth_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to create (must not exist, or be empty).",
                                        show_default=False)],
    train: Annotated[int, typer.Option(help="Training images.")] = 3000,
    val: Annotated[int, typer.Option(help="Validation images.")] = 500,
    size: Annotated[int, typer.Option(help="Image side in pixels (square images).")] = 160,
    seed: SeedOpt = 0,
) -> None:
    """Write the synthetic shapes dataset: OUT/images/*.png, OUT/train.json, OUT/val.json.

    Six classes of outlined shapes on textured backgrounds, in COCO format; two class pairs
    differ only in colour, with equal grey levels. Prints a JSON summary on stdout."""
    from prunekit.data.synth import synth

    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar = Progress(*columns, console=console, redirect_stdout=False, redirect_stderr=False)
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:  # started on the first image, so a bad argument shows no bar
            bar.start()
            task = bar.add_task("synth", total=total)
        bar.update(task, completed=done)

    try:
        summary = synth(out, train=train, val=val, size=size, seed=seed, progress=update)
    finally:
        if task is not None:
            bar.stop()
    console.print(f"wrote {out}: {train} train + {val} val images", highlight=False)
    typer.echo(json.dumps(summary))
