"""`prunekit sensitivity`: prune one group at a time over a range of ratios and measure mAP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import check_output, console, progress_bar, read_checkpoint
from prunekit.cli._options import (
    AlphaOpt,
    CheckpointArg,
    DeviceOpt,
    EpsOpt,
    LossOpt,
    SeedOpt,
    StepsOpt,
    ThreadsOpt,
    attack_config,
)

EXAMPLE = """Examples:

  prunekit sensitivity scored.st --data data/synth/val.json --max-images 100 -o sens.csv

  prunekit sensitivity scored.st --data data/synth/val.json --granularity filter --adv pgd --jobs 2 -o sens-filter.csv

  prunekit score --method l1-filter model.st | prunekit sensitivity --data val.json --structured --ratios 0.25,0.5,0.75 > sens.csv
"""


@app.command("sensitivity", epilog=EXAMPLE)
def sensitivity_cmd(
    model: CheckpointArg = None,
    data: Annotated[Path, typer.Option(help="Validation COCO JSON.", show_default=False)] = ...,
    images: Annotated[Path | None, typer.Option(help="Image root of --data (default: its "
                                                "folder).", show_default=False)] = None,
    max_images: Annotated[int | None, typer.Option(help="Measure on the first N images (by "
                                                   "id).", show_default=False)] = None,
    ratios: Annotated[str, typer.Option(help="Ratios each group is pruned at, in (0, 1).")]
    = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    structured: Annotated[bool, typer.Option("--structured", help="Same as --granularity "
                                             "filter.")] = False,
    granularity: Annotated[str | None, typer.Option(help="weight (default: a group is one "
                                                    "conv or linear weight), kernel, or filter "
                                                    "(a group is a channel group, everything "
                                                    "coupled to it included).",
                                                    show_default=False)] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Measure only this group "
                                                    "(repeat for more; names as in the CSV).",
                                                    show_default=False)] = None,
    adv: Annotated[str | None, typer.Option(help="Also measure mAP under this attack: pgd or "
                                            "fgsm.", show_default=False)] = None,
    eps: EpsOpt = None,
    alpha: AlphaOpt = None,
    steps: StepsOpt = None,
    loss: LossOpt = None,
    conf: Annotated[float, typer.Option(help="Detection threshold (0.001: COCO practice for "
                                        "mAP).")] = 0.001,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold.")] = 0.45,
    max_det: Annotated[int, typer.Option(help="Detections kept per image.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    jobs: Annotated[int, typer.Option(help="Processes measuring groups side by side.")] = 1,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    figure: Annotated[Path | None, typer.Option(help="PNG of the curves (default: beside -o, "
                                                ".png; none without -o).",
                                                show_default=False)] = None,
    worst: Annotated[int, typer.Option(help="Groups labelled in the figure, most sensitive "
                                       "first.")] = 5,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="CSV path; resumed when it exists (groups in it are not "
        "measured again). Default: stdout.", show_default=False)] = None,
) -> None:
    """Prune each group alone at each ratio (by the checkpoint's scores, as `mask` would) and
    write clean (and attacked) mAP per group and ratio as CSV, with a figure."""
    from prunekit import sensitivity as sens
    from prunekit.cli._io import write_text
    from prunekit.errors import PrunekitError

    if structured and granularity not in (None, "filter"):
        raise PrunekitError(f"--structured means --granularity filter, not {granularity}")
    gran = "filter" if structured else (granularity or "weight")
    attack = attack_config(adv, method_flag="--adv", eps=eps, alpha=alpha, steps=steps,
                           loss=loss)
    config = sens.SensitivityConfig(ratios=sens.parse_ratios(ratios), granularity=gran,
                                    attack=attack, max_images=max_images, conf=conf, iou=iou,
                                    max_det=max_det, batch_size=batch_size, seed=seed).check()
    if jobs < 1:
        raise PrunekitError(f"--jobs must be at least 1, got {jobs}")
    if worst < 0:
        raise PrunekitError(f"--worst must be at least 0, got {worst}")
    check_output(output)
    picture = figure or (sens.default_figure(output) if output not in (None, Path("-"))
                         else None)
    check_output(picture)
    ck = read_checkpoint(model)
    setting = sens.settings(ck, sens.subset(data, max_images), config)
    rows: list[dict] = []
    resumed = output is not None and str(output) != "-" and output.exists()
    if resumed:
        old = sens.read(output)
        sens.check_resumable(old, output, setting, config.ratios)
        rows = old.drop(columns=list(sens.SETTINGS)).to_dict("records")
    order = sens.labels(ck, gran)
    done = {r["group"] for r in rows}
    todo = [g for g in (group or order) if g not in done]
    if resumed:
        measured = len(done - {sens.UNPRUNED})
        console.print(f"{output}: {measured} group{'' if measured == 1 else 's'} measured, "
                      f"{len(todo)} to go", highlight=False)
    with progress_bar("sensitivity") as bar:
        task = bar.add_task("sensitivity", total=len(todo) + (sens.UNPRUNED not in done),
                            info="")
        for found in sens.measure(ck, data, config, images=images, groups=group or None,
                                  skip=sorted(done), jobs=jobs, threads=threads,
                                  device=device):
            rows += found
            if output is not None and str(output) != "-":
                sens.write(sens.table(rows, order, setting), output)
            last = found[-1]
            bar.update(task, advance=1, info=f"{last['group'][:30]}: mAP {last['map']:.3f} at "
                       f"{last['ratio']:g}")
    frame = sens.table(rows, order, setting)
    if output is None or str(output) == "-":
        write_text(str(sens.to_csv(frame), "utf-8"), None)
    else:
        sens.write(frame, output)
        console.print(f"wrote {output} ({len(frame)} rows)", highlight=False)
    if picture is not None:
        sens.write_figure(frame, picture, worst=worst)
        console.print(f"wrote {picture}", highlight=False)
