"""`prunekit export`: write a checkpoint in another tool's format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import console, read_checkpoint
from prunekit.cli._options import CheckpointArg

EXAMPLE = """Examples:

  prunekit export detr.st --hf detr-hf/

  prunekit score --method magnitude detr.st | prunekit mask --ratio 0.5 | prunekit export --hf detr-sparse/
"""


@app.command("export", epilog=EXAMPLE)
def export_cmd(
    model: CheckpointArg = None,
    hf: Annotated[Path | None, typer.Option("--hf", help="Write a Hugging Face save_pretrained "
                                            "folder (Deformable DETR; not for compacted "
                                            "models).", show_default=False)] = None,
) -> None:
    """Export a checkpoint: a Hugging Face save_pretrained folder (--hf DIR)."""
    from prunekit.errors import PrunekitError
    from prunekit.export import export

    if hf is None:
        raise PrunekitError("which format? give --hf DIR (a save_pretrained folder)")
    ck = read_checkpoint(model)
    out = export(ck, hf, fmt="hf")
    console.print(f"wrote {out}", highlight=False)
