"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CheckpointArg = Annotated[
    str | None,
    typer.Argument(help="Checkpoint path; `-` or omitted reads stdin.", show_default=False),
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
    typer.Option("--img-size", help="Input size in pixels, a multiple of 32 (default: the "
                 "model's).", show_default=False),
]
