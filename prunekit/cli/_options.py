"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.errors import PrunekitError


def _workers(value: int) -> int:
    if value < 0:
        raise PrunekitError(f"--workers must be at least 0 (0 loads data in the main process), "
                            f"got {value}")
    return value


CheckpointArg = Annotated[
    str | None,
    typer.Argument(help="Checkpoint path; `-` or omitted reads stdin.", show_default=False),
]
ModelArg = Annotated[
    str | None,
    typer.Argument(help="Checkpoint, or an .onnx file `prunekit export` wrote; `-` or omitted "
                   "reads stdin.", show_default=False),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("-o", "--output", help="Output path; omitted writes to stdout when it is not a "
                 "terminal.", show_default=False),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")
]
ImgSizeOpt = Annotated[
    int | None,
    typer.Option("--img-size", help="Input size in pixels: YOLOv3's square side (a multiple "
                 "of 32), or Deformable DETR's canvas height (default: the model's).",
                 show_default=False),
]
EpsOpt = Annotated[float, typer.Option("--eps", help="Attack radius (L∞, images in [0, 1]).")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Attack (PGD) step size.")]
# PGD steps: `--steps` where the command has no training steps, `--attack-steps` where it has.
AttackStepsOpt = Annotated[int, typer.Option("--attack-steps", help="PGD steps.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="DataLoader worker processes.",
                                         callback=_workers)]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="CPU threads (default: torch's).", show_default=False),
]
