"""`prunekit data kitti`: convert KITTI 2D labels to COCO JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._app import data_app
from prunekit.cli._io import console
from prunekit.cli._options import SeedOpt

EXAMPLE = """Examples:

  prunekit data kitti kitti/training data/kitti

  prunekit data kitti training data/cars --classes Car --dontcare ignore

  prunekit data kitti kitti/training data/kitti --val-fraction 0.1 --seed 1

Image paths in the JSON files are relative to ROOT (the images are not copied): give
--images ROOT to finetune, detect and attack.
"""


@data_app.command("kitti", epilog=EXAMPLE)
def kitti_cmd(
    root: Annotated[Path, typer.Argument(help="KITTI folder holding label_2/ and image_2/.",
                                         show_default=False)],
    out: Annotated[Path, typer.Argument(help="Output folder for train.json and val.json.",
                                        show_default=False)],
    classes: Annotated[str, typer.Option(help="Comma-separated KITTI types to keep, in "
                                         "category-id order.")] = "Car,Pedestrian,Cyclist",
    dontcare: Annotated[str, typer.Option(help="drop: discard DontCare boxes; ignore: keep them "
                                          "as iscrowd regions that excuse detections of every "
                                          "class.")] = "drop",
    val_fraction: Annotated[float, typer.Option(help="Share of images in the val split, in "
                                                "[0, 1).")] = 0.2,
    seed: SeedOpt = 0,
) -> None:
    """Convert KITTI 2D object labels to COCO train.json and val.json; prints a JSON summary."""
    from prunekit.data.kitti import convert

    class_list = [c.strip() for c in classes.split(",") if c.strip()]
    summary = convert(root, out, classes=class_list, dontcare=dontcare,
                      val_fraction=val_fraction, seed=seed)
    for split in ("train", "val"):
        console.print(f"wrote {summary['files'][split]} ({summary['images'][split]:,} images, "
                      f"{summary['annotations'][split]:,} annotations)", highlight=False)
    for name in summary["empty_classes"]:
        console.print(f"warning: no '{name}' objects in {root / 'label_2'}", highlight=False)
    typer.echo(json.dumps(summary, indent=2))
