"""`prunekit mask`: prune a scored checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import check_output, console, read_checkpoint, write_checkpoint
from prunekit.cli._options import CheckpointArg, DeviceOpt, OutputOpt, ThreadsOpt, refuse_given

EXAMPLE = """Examples:

  prunekit mask scored.st --ratio 0.9 -o pruned.st

  prunekit mask scored.st --structured --ratio 0.5 --compact -o small.st

  prunekit mask scored.st --structured --ratio 0.75 --compact --round-to 16 -o small16.st

  prunekit score --method l1-filter model.st | prunekit mask --granularity filter --scope global --ratio 0.3 > pruned.st

  prunekit mask scored.st --ratios-from sens.csv --target-macs 0.5 --compact -o half.st

  prunekit mask scored.st --ratios-from sens.csv --target-macs 0.26 --max-ratio 0.6 --compact -o quarter.st
"""


@app.command("mask", epilog=EXAMPLE)
def mask_cmd(
    ctx: typer.Context,
    model: CheckpointArg = None,
    ratio: Annotated[float | None, typer.Option(help="Fraction of weights (or kernels, or "
                                                "filters) removed, in [0, 1).",
                                                show_default=False)] = None,
    structured: Annotated[bool, typer.Option("--structured", help="Same as --granularity "
                                             "filter.")] = False,
    granularity: Annotated[str | None, typer.Option(help="weight (default), kernel or filter.",
                                                    show_default=False)] = None,
    scope: Annotated[str, typer.Option(help="layer (the ratio in every layer) or "
                                       "global.")] = "layer",
    compact: Annotated[bool, typer.Option("--compact", help="Physically remove pruned filters "
                                          "(smaller and faster).")] = False,
    ratios_from: Annotated[Path | None, typer.Option(
        help="A ratio per group instead of --ratio, from this `prunekit sensitivity` CSV of "
             "the checkpoint: the least predicted loss for the --target-*.",
        show_default=False)] = None,
    target_macs: Annotated[float | None, typer.Option(
        help="With --ratios-from: MACs as a fraction of the unpruned model's (0.5: half).",
        show_default=False)] = None,
    target_params: Annotated[float | None, typer.Option(
        help="With --ratios-from: parameters as a fraction of the unpruned model's.",
        show_default=False)] = None,
    target_latency: Annotated[float | None, typer.Option(
        help="With --ratios-from (filter groups): latency in ms, measured as `bench` "
             "measures it on --device.", show_default=False)] = None,
    metric: Annotated[str, typer.Option(help="With --ratios-from: the CSV's metric whose "
                                        "predicted loss is least (map, map50, adv_map, "
                                        "...).")] = "map",
    max_ratio: Annotated[float | None, typer.Option(
        help="With --ratios-from: no group pruned beyond this ratio (the losses measured one "
             "group at a time add up badly far from the unpruned model).",
        show_default=False)] = None,
    runtime: Annotated[str, typer.Option(help="With --target-latency: bench's runtime.")]
    = "auto",
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    round_to: Annotated[int, typer.Option("--round-to", help="Filters: keep a multiple of this "
                                          "many channels in every layer (8 or 16: the widths "
                                          "CPU kernels vectorise), a few more than --ratio "
                                          "leaves; 1: none.")] = 1,
    output: OutputOpt = None,
) -> None:
    """Build masks from the scores, apply them, and drop the scores."""
    from prunekit.budget import check_max_ratio
    from prunekit.errors import PrunekitError
    from prunekit.mask import PruneConfig, mask

    if structured and granularity not in (None, "filter"):
        raise PrunekitError(f"--structured means --granularity filter, not {granularity}")
    targets = {k: v for k, v in (("macs", target_macs), ("params", target_params),
                                 ("latency", target_latency)) if v is not None}
    if ratios_from is not None:
        if ratio is not None or len(targets) != 1 or scope != "layer":
            raise PrunekitError("--ratios-from takes one of --target-macs, --target-params or "
                                "--target-latency, without --ratio or --scope global")
        _check_target(*next(iter(targets.items())))
        if round_to != 1:
            raise PrunekitError("--round-to rounds a uniform --ratio; --ratios-from allocates "
                                "each group's ratio to the budget exactly: drop one of them")
        check_max_ratio(max_ratio)
    elif ratio is None or targets:
        raise PrunekitError("how much to prune? give --ratio R, or --ratios-from sens.csv "
                            "with --target-macs, --target-params or --target-latency")
    elif max_ratio is not None:
        raise PrunekitError("--max-ratio bounds the ratios --ratios-from allocates; with "
                            "--ratio every group is pruned at that ratio: drop --max-ratio")
    if ratios_from is None:
        refuse_given(ctx, ("metric",), "without --ratios-from (the sensitivity CSV it reads)")
    if target_latency is None:
        refuse_given(ctx, ("runtime",), "without --target-latency")
    gran = "filter" if structured else (granularity or "weight")
    config = PruneConfig(ratio=ratio or 0.0, granularity=gran, scope=scope, compact=compact,
                         round_to=round_to).check()
    check_output(output, what="a checkpoint")
    ck = read_checkpoint(model)
    if ratios_from is not None:
        out = _mask_to_budget(ck, ratios_from, targets,
                              granularity="filter" if structured else granularity,
                              compact=compact, metric=metric, runtime=runtime,
                              threads=threads, device=device, max_ratio=max_ratio)
    else:
        out = mask(ck, config)
        entry = next(h for h in reversed(out.history) if h["command"] == "mask")["args"]
        left = f"; {len(entry['unpruned'])} weights without scores left unpruned" \
            if entry.get("unpruned") else ""
        console.print(f"{gran} pruning at {ratio:g}: {entry['sparsity']:.1%} of prunable "
                      f"weights zeroed" + (_compacted(out) if compact else "") + left,
                      highlight=False)
    write_checkpoint(out, output)


def _compacted(ck) -> str:
    """What compaction removed, as the console line's tail: only filters left wholly empty go,
    which weight and kernel pruning seldom leave."""
    entry = next(h for h in reversed(ck.history) if h["command"] == "compact")["args"]
    before, after = entry["prunable_weights_before"], entry["prunable_weights_after"]
    if after == before:
        return ", compacted: no filter was left wholly empty, nothing removed (use --structured)"
    return f", compacted: {1 - after / before:.1%} of prunable weights removed"


def _check_target(kind: str, value: float) -> None:
    from prunekit.budget import check_fraction
    from prunekit.errors import PrunekitError

    if kind != "latency":
        check_fraction(value, f"--target-{kind}")
    elif not value > 0:
        raise PrunekitError(f"--target-latency must be a positive number of milliseconds, got "
                            f"{value}")


def _mask_to_budget(ck, source: Path, targets: dict[str, float], *,  # noqa: ANN001
                    granularity: str | None, compact: bool, metric: str, runtime: str,
                    threads: int | None, device: str, max_ratio: float | None):
    """Allocate ratios from the sensitivity CSV, print them, record them, and mask."""
    from rich.table import Table

    from prunekit.mask import PruneConfig, mask
    from prunekit.sensitivity import ratios_for_budget

    kind, value = next(iter(targets.items()))
    with console.status("allocating ratios", spinner="dots"):
        alloc, gran = ratios_for_budget(ck, source, target=kind, value=value, metric=metric,
                                        granularity=granularity, runtime=runtime,
                                        device=device, threads=threads,
                                        max_ratio=max_ratio)
    ceiling = "" if max_ratio is None else f", none beyond {max_ratio:g}"
    table = Table(title=f"ratios for --target-{kind} {value:g} (least predicted {metric} "
                        f"loss{ceiling})",
                  title_justify="left")
    for column in ("group", "ratio", f"predicted {metric} loss"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group, r in alloc.ratios.items():
        table.add_row(group, f"{r:g}", f"{alloc.losses[group]:.4f}")
    console.print(table)
    what = "compacted" if gran == "filter" else "non-zero"
    console.print(f"{what} MACs {alloc.cost.macs:,} of {alloc.base.macs:,} "
                  f"({alloc.cost.macs / alloc.base.macs:.3f}), parameters {alloc.cost.params:,} "
                  f"of {alloc.base.params:,} ({alloc.cost.params / alloc.base.params:.3f}); "
                  f"predicted {metric} loss {alloc.predicted_loss:.4f}"
                  + (f"; {len(alloc.unmeasured)} groups not in {source} left whole"
                     if alloc.unmeasured else ""), highlight=False)
    staged = copy.copy(ck)
    staged.history = list(ck.history)
    staged.add_history("allocate", {"sensitivity": str(source), "metric": metric,
                                    "granularity": gran, **alloc.record()})
    return mask(staged, PruneConfig(0.0, gran, compact=compact,
                                    ratios={g: r for g, r in alloc.ratios.items() if r > 0}))
