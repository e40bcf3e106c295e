"""`prunekit history`: what made a checkpoint, as recorded entries or as the commands to redo it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import read_checkpoint
from prunekit.cli._options import CheckpointArg

EXAMPLE = """Examples:

  prunekit history model.st

  prunekit history model.st --command

  SOURCE_DATE_EPOCH=1767225600 sh -c "$(prunekit history model.st --command)" > again.st
"""


@app.command("history", epilog=EXAMPLE)
def history_cmd(
    model: CheckpointArg = None,
    command: Annotated[bool, typer.Option("--command", help="Print the commands that made the "
                                          "checkpoint, one step per line as a pipeline (the "
                                          "last line redoes the last step from the previous "
                                          "one's output), instead of the recorded "
                                          "entries.")] = False,
) -> None:
    """Print a checkpoint's history: one JSON entry per step (command, settings, prunekit
    version, time), or with --command the command lines that redo it; run with the same
    SOURCE_DATE_EPOCH, they write the same bytes."""
    from prunekit.history import pipeline

    ck = read_checkpoint(model)
    if command:
        typer.echo(pipeline(ck.history))
        return
    for entry in ck.history:
        typer.echo(json.dumps(entry, sort_keys=True))
