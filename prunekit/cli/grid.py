"""`prunekit grid`: the building blocks the Makefile's experiment grid is made of."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import check_output, console, write_text
from prunekit.cli._options import AlphaOpt, AttackStepsOpt, EpsOpt, attack_config

grid_app = typer.Typer(
    help="The experiment grid's building blocks (see `make all-scenarios`): one cell, "
         "collecting cells, a validation subset.",
    epilog="Example: prunekit grid collect runs/grid -o runs/grid/results.csv",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(grid_app, name="grid")

CELL_EXAMPLE = """Examples:

  prunekit grid cell runs/grid/run1/deeplift-rgb.st runs/grid/structured-deeplift/run1/r0.75 --scenario structured-deeplift --run 1 --ratio 0.75 --granularity filter --data data/synth/train.json --val data/synth/val-grid.json

  prunekit grid cell runs/grid/run1/deeplift-rgb.st /tmp/cell --scenario unstructured-deeplift --run 1 --ratio 0.5 --data data/synth/train.json --val data/synth/val-grid.json --runtime onednn-graph

  prunekit grid cell runs/schedule-study/yolov3-small/scores-weight.st /tmp/cell --scenario yolov3-small.weight.cubic --schedule cubic --run 1 --ratio 0.9 --steps 150 --data data/synth/train.json --val data/synth/val-grid.json

  prunekit grid cell runs/schedule-study/yolov3-small/scores-weight.st /tmp/cell --scenario yolov3-small.weight.cubic --schedule cubic --scope global --run 1 --ratio 0.9 --steps 60 --data data/synth/train.json --val data/synth/val-grid.json

  prunekit grid cell runs/kitti-study/yolov3-small/scores-filter.st /tmp/cell --scenario yolov3-small.filter.pruned --run 1 --ratio 0.3 --granularity filter --method l1-filter --steps 0 --adv none --no-adv-eval --data data/kitti-synth/coco/train.json --val data/kitti-synth/coco/val-study.json --images data/kitti-synth/training
"""


@grid_app.command("cell", epilog=CELL_EXAMPLE)
def cell_cmd(
    model: Annotated[Path, typer.Argument(help="Scored robust checkpoint.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="The cell's folder.", show_default=False)],
    scenario: Annotated[str, typer.Option(help="Scenario name.", show_default=False)] = ...,
    run: Annotated[int, typer.Option(help="Run number.", show_default=False)] = ...,
    ratio: Annotated[float, typer.Option(help="Pruning ratio.", show_default=False)] = ...,
    data: Annotated[Path, typer.Option(help="Training COCO JSON.", show_default=False)] = ...,
    val: Annotated[Path, typer.Option(help="Validation COCO JSON.", show_default=False)] = ...,
    granularity: Annotated[str, typer.Option(help="weight or filter.")] = "weight",
    scope: Annotated[str, typer.Option(help="layer (the ratio in every layer) or global (one "
                                       "score threshold across layers).")] = "layer",
    steps: Annotated[int, typer.Option(help="Fine-tuning steps after pruning.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Fine-tuning batch size.")] = 16,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate.")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(help="Fine-tuning weight decay.")] = 0.05,
    adv: Annotated[str, typer.Option(help="Fine-tuning attack: fgsm, pgd or none.")] = "fgsm",
    eps: EpsOpt = None,
    alpha: AlphaOpt = None,
    attack_steps: AttackStepsOpt = None,
    adv_eval: Annotated[bool, typer.Option("--adv-eval/--no-adv-eval", help="Also detect on "
                                           "PGD-attacked images (adv_* metrics).")] = True,
    images: Annotated[Path | None, typer.Option(help="Image root of --data and --val "
                                                "(default: each JSON's folder).",
                                                show_default=False)] = None,
    method: Annotated[str | None, typer.Option(help="Score method the model was pruned by "
                                               "(recorded; default: the scenario's).",
                                               show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads.")] = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda (also timed on CUDA, beside the "
                                        "CPU latency).")] = "cpu",
    bench_seconds: Annotated[float, typer.Option(help="Seconds of timed runs.")] = 1.0,
    runtime: Annotated[str, typer.Option(help="Latency runtime: eager (one runtime for every "
                                         "cell) or onednn-graph; see `prunekit bench`.")] = "eager",
    reuse: Annotated[Path | None, typer.Option(help="Copy the result.json of an identical "
                                               "ratio-0 cell instead of measuring again.",
                                               show_default=False)] = None,
    schedule: Annotated[str | None, typer.Option(
        help="The schedule study's schedule: one-shot (prune, then fine-tune), linear or cubic "
             "(prune while fine-tuning, Zhu & Gupta), sensitivity (prune at ratios allocated "
             "from --ratios-from for the uniform ratio's MACs, then fine-tune). Ratio 0 is then "
             "fine-tuned too (the control).", show_default=False)] = None,
    prune_end: Annotated[int | None, typer.Option(
        help="linear, cubic: the last update's step (default two thirds of --steps).",
        show_default=False)] = None,
    prune_every: Annotated[int | None, typer.Option(
        help="linear, cubic: steps between updates (default a tenth of --prune-end).",
        show_default=False)] = None,
    ratios_from: Annotated[Path | None, typer.Option(
        help="sensitivity: the `prunekit sensitivity` CSV of MODEL.", show_default=False)]
    = None,
) -> None:
    """Mask, fine-tune under attack, detect clean and attacked, evaluate, bench: result.json."""
    from dataclasses import replace

    from prunekit.device import check_threads
    from prunekit.errors import PrunekitError
    from prunekit.finetune import TrainConfig
    from prunekit.grid import GRADUAL, CellSchedule, Measure, cell
    from prunekit.mask import PruneConfig

    check_threads(threads, timed=True)
    if not bench_seconds > 0:  # before the cell's fine-tuning, not after it
        raise PrunekitError(f"--bench-seconds must be more than 0 seconds of timed runs, got "
                            f"{bench_seconds:g}")
    if adv not in ("none", "pgd", "fgsm"):
        raise PrunekitError(f"--adv {adv!r} is unknown; use fgsm, pgd or none")
    root = str(images) if images else None
    # Filter masks are compacted: the compacted model computes the same, faster.
    prune = PruneConfig(ratio=ratio, granularity=granularity, scope=scope,
                        compact=granularity == "filter")
    if ratios_from is not None and schedule is None:
        raise PrunekitError("--ratios-from goes with --schedule sensitivity")
    if schedule == "sensitivity" and scope != "layer":
        raise PrunekitError("--schedule sensitivity allocates a ratio per group from "
                            "--ratios-from; --scope global has no say in it: drop --scope")
    if schedule in GRADUAL and ratio > 0:
        end = prune_end if prune_end is not None else max(1, 2 * steps // 3)
        every = prune_every if prune_every is not None else max(1, end // 10)
        prune = replace(prune, schedule=schedule, end=end, every=every)
    elif prune_end is not None or prune_every is not None:
        raise PrunekitError("--prune-end and --prune-every go with --schedule linear or cubic")
    train = TrainConfig(data=str(data), steps=steps, batch_size=batch_size, lr=lr,
                        weight_decay=weight_decay, images=root, workers=0, seed=seed) \
        if steps else None
    settings = {"eps": eps, "alpha": alpha, "steps": attack_steps}
    attack = attack_config(adv, method_flag="--adv", steps_flag="--attack-steps",
                           settings_used=adv_eval, **settings)
    evaluation = attack_config("pgd" if adv_eval else None, method_flag="--adv-eval",
                               steps_flag="--attack-steps", settings_used=adv != "none",
                               **settings)
    measure = Measure(val=str(val), images=root, attack=evaluation, bench_seconds=bench_seconds,
                      runtime=runtime, threads=threads, seed=seed)
    row = cell(model, out, scenario=scenario, run=run, prune=prune, train=train, attack=attack,
               measure=measure, method=method, device=device, reuse=reuse,
               schedule=None if schedule is None else CellSchedule(
                   schedule, None if ratios_from is None else str(ratios_from)))
    adversarial = f", adversarial {row['adv_map']:.3f}" if "adv_map" in row else ""
    seconds = f", {row['seconds_total']:.0f} s" if "seconds_total" in row else ""
    console.print(f"{scenario} run {run} ratio {ratio:g}: mAP {row['map']:.3f}{adversarial}, "
                  f"{row['latency_ms']:.1f} ms{seconds}", highlight=False)


@grid_app.command("collect", epilog="Example:\n\n  prunekit grid collect runs/grid --times runs/grid/times.log -o "
                                    "runs/grid/results.csv\n")
def collect_cmd(
    root: Annotated[Path, typer.Argument(help="The grid's folder.", show_default=False)],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="CSV path (default: "
                                                "stdout).", show_default=False)] = None,
    times: Annotated[Path | None, typer.Option(
        "--times", help="The grid's times.log: adds seconds_score, the time of the step that "
        "wrote each pruned cell's score file.", show_default=False)] = None,
) -> None:
    """Gather every cell's result.json into one long-format CSV."""
    from prunekit.grid import collect

    check_output(output)
    df = collect(root, times)
    write_text(df.to_csv(index=False), output)
    console.print(f"{len(df)} cells", highlight=False)


@grid_app.command("subset", epilog="Example:\n\n  prunekit grid subset data/synth/val.json "
                                   "data/synth/val-grid.json --images 200\n")
def subset_cmd(
    src: Annotated[Path, typer.Argument(help="COCO JSON.", show_default=False)],
    dest: Annotated[Path, typer.Argument(help="Output COCO JSON, beside SRC.",
                                         show_default=False)],
    images: Annotated[int, typer.Option(help="Images kept (the first by id).")] = 200,
) -> None:
    """Keep the first N images of a COCO JSON (a fixed validation subset for the grid)."""
    from prunekit.grid import subset

    typer.echo(json.dumps({"images": subset(src, dest, images)}))
