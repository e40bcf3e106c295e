"""`prunekit mask`: prune a scored checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import check_output, console, read_checkpoint, write_checkpoint
from prunekit.cli._options import CheckpointArg, OutputOpt

EXAMPLE = """Examples:

  prunekit mask scored.st --ratio 0.9 -o pruned.st

  prunekit mask scored.st --structured --ratio 0.5 --compact -o small.st

  prunekit mask scored.st --structured --ratio 0.75 --compact --round-to 16 -o small16.st

  prunekit score --method l1-filter model.st | prunekit mask --granularity filter --scope global --ratio 0.3 > pruned.st
"""


@app.command("mask", epilog=EXAMPLE)
def mask_cmd(
    model: CheckpointArg = None,
    ratio: Annotated[float, typer.Option(help="Fraction of weights (or kernels, or filters) "
                                         "removed, in [0, 1).", show_default=False)] = ...,
    structured: Annotated[bool, typer.Option("--structured", help="Same as --granularity "
                                             "filter.")] = False,
    granularity: Annotated[str | None, typer.Option(help="weight (default), kernel or filter.",
                                                    show_default=False)] = None,
    scope: Annotated[str, typer.Option(help="layer (the ratio in every layer) or "
                                       "global.")] = "layer",
    compact: Annotated[bool, typer.Option("--compact", help="Physically remove pruned filters "
                                          "(smaller and faster).")] = False,
    round_to: Annotated[int, typer.Option("--round-to", help="Filters: keep a multiple of this "
                                          "many channels in every layer (8 or 16: the widths "
                                          "CPU kernels vectorise), a few more than --ratio "
                                          "leaves; 1: none.")] = 1,
    output: OutputOpt = None,
) -> None:
    """Build masks from the scores, apply them, and drop the scores."""
    from prunekit.errors import PrunekitError
    from prunekit.mask import PruneConfig, mask

    if structured and granularity not in (None, "filter"):
        raise PrunekitError(f"--structured means --granularity filter, not {granularity}")
    gran = "filter" if structured else (granularity or "weight")
    config = PruneConfig(ratio=ratio, granularity=gran, scope=scope, compact=compact,
                         round_to=round_to).check()
    check_output(output, what="a checkpoint")
    ck = read_checkpoint(model)
    out = mask(ck, config)
    entry = next(h for h in reversed(out.history) if h["command"] == "mask")["args"]
    left = f"; {len(entry['unpruned'])} weights without scores left unpruned" \
        if entry.get("unpruned") else ""
    console.print(f"{gran} pruning at {ratio:g}: {entry['sparsity']:.1%} of prunable weights "
                  f"zeroed" + (", compacted" if compact else "") + left, highlight=False)
    write_checkpoint(out, output)
