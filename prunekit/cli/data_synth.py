"""`prunekit data synth`: write the built-in synthetic detection dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prunekit.cli._app import data_app
from prunekit.cli._io import console
from prunekit.cli._options import SeedOpt, refuse_given

EXAMPLE = """Examples:

  prunekit data synth data/synth

  prunekit data synth /tmp/tiny --train 40 --val 10 --size 96 --seed 1

  prunekit data synth kitti-synth --layout kitti --images 2500 --width 384 --height 128

  prunekit data kitti kitti-synth data/kitti-synth
"""


@data_app.command("synth", epilog=EXAMPLE)
def synth_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder to create (must not exist, or be empty).",
                                        show_default=False)],
    layout: Annotated[str, typer.Option(help="coco: the shapes dataset as COCO JSON; kitti: "
                                        "road scenes as KITTI's image_2/ and label_2/.")] = "coco",
    train: Annotated[int, typer.Option(help="Training images (coco).")] = 3000,
    val: Annotated[int, typer.Option(help="Validation images (coco).")] = 500,
    size: Annotated[int, typer.Option(help="Image side in pixels (coco; square images).")] = 160,
    images: Annotated[int, typer.Option(help="Images (kitti; `data kitti --val-fraction` "
                                        "splits them).")] = 2500,
    width: Annotated[int, typer.Option(help="Image width (kitti).")] = 1242,
    height: Annotated[int, typer.Option(help="Image height (kitti).")] = 375,
    seed: SeedOpt = 0,
) -> None:
    """Write a synthetic dataset: shapes as COCO, or road scenes in KITTI's own format.

    coco: six classes of outlined shapes on textured backgrounds, OUT/images/*.png,
    OUT/train.json, OUT/val.json; two class pairs differ only in colour, with equal grey levels.
    kitti: Car, Van, Pedestrian and Cyclist on wide road scenes with truncation, occlusion and
    DontCare regions, OUT/image_2/*.png and OUT/label_2/*.txt, for `prunekit data kitti`.
    Prints a JSON summary on stdout."""
    from prunekit.errors import PrunekitError

    if layout not in ("coco", "kitti"):
        raise PrunekitError(f"--layout {layout!r} is unknown; use coco or kitti")
    other = ("train", "val", "size") if layout == "kitti" else ("images", "width", "height")
    refuse_given(ctx, other, f"with --layout {layout}")

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
        if layout == "kitti":
            from prunekit.data.synth_kitti import synth_kitti

            summary = synth_kitti(out, images=images, width=width, height=height, seed=seed,
                                  progress=update)
        else:
            from prunekit.data.synth import synth

            summary = synth(out, train=train, val=val, size=size, seed=seed, progress=update)
    finally:
        if task is not None:
            bar.stop()
    what = f"{images} KITTI-format scenes" if layout == "kitti" else \
        f"{train} train + {val} val images"
    console.print(f"wrote {out}: {what}", highlight=False)
    typer.echo(json.dumps(summary))
