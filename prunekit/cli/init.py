"""`prunekit init`: build a detector checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from prunekit.cli._app import app
from prunekit.cli._families import FamilyOptionsCommand, members, with_family_options
from prunekit.cli._io import check_output, write_checkpoint
from prunekit.cli._options import ImgSizeOpt, OutputOpt, SeedOpt

EXAMPLE = """Examples:

  prunekit init yolov3 --classes 80 --img-size 416 -o yolov3.st

  prunekit init yolov3-small --dataset data/synth/train.json --grey -o small-grey.st

  prunekit init --cfg yolov3.cfg --weights yolov3.weights -o yolov3-coco.st

  prunekit init deformable-detr-small --dataset data/kitti/train.json -o detr.st

  prunekit init --hf deformable-detr-kitti/ --img-size 384 -o detr-kitti.st
"""


@app.command("init", epilog=EXAMPLE, cls=FamilyOptionsCommand)
@with_family_options("init")
def init_cmd(
    arch: Annotated[str | None, typer.Argument(
        help=f"A family member: {members()} (omit when a family's option imports files, "
             f"e.g. --cfg or --hf).", show_default=False)] = None,
    classes: Annotated[int | None, typer.Option(help="Number of classes.",
                                                show_default=False)] = None,
    names: Annotated[str | None, typer.Option(help="Comma-separated class names, in "
                                              "category-id order.", show_default=False)] = None,
    dataset: Annotated[Path | None, typer.Option(help="COCO JSON whose categories give the "
                                                 "classes.", show_default=False)] = None,
    img_size: ImgSizeOpt = None,
    grey: Annotated[bool, typer.Option("--grey", help="Feed the model Rec. 601 grey "
                                       "images.")] = False,
    seed: SeedOpt = 0,
    output: OutputOpt = None,
    *,
    options: dict[str, Any],
) -> None:
    """Build a detector: a family member with fresh weights, or a family's own files (e.g.
    Darknet .cfg + .weights, an HF Deformable DETR folder). Class names come from --names, --dataset,
    or the imported files. --img-size is YOLOv3's square side, or Deformable DETR's canvas
    height (the width keeps the member's aspect). Each family adds its own options, listed
    below by family."""
    from prunekit.errors import PrunekitError
    from prunekit.init import init

    check_output(output, what="a checkpoint")
    name_list = [n.strip() for n in names.split(",")] if names else None
    if name_list is not None and not all(name_list):
        raise PrunekitError(f"--names {names!r} has an empty name; give one name per class, "
                            f"separated by commas (e.g. --names car,person)")
    ck = init(arch, classes=classes, names=name_list, dataset=dataset, img_size=img_size,
              grey=grey, options=options, seed=seed)
    write_checkpoint(ck, output)
