"""`prunekit detect`: detections CSV for a dataset or a folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import check_output, console, progress_bar, read_model
from prunekit.cli._options import (
    AlphaOpt,
    DeviceOpt,
    EpsOpt,
    LossOpt,
    ModelArg,
    SeedOpt,
    StepsOpt,
    ThreadsOpt,
    WorkersOpt,
    attack_config,
)

EXAMPLE = """Examples:

  prunekit detect model.st --data data/synth/val.json --conf 0.001 -o dets.csv

  prunekit detect model.st --images photos/ --conf 0.5 > dets.csv

  prunekit detect robust.st --data data/synth/val.json --attack pgd --eps 0.05 --alpha 0.02 --steps 5 -o adv-dets.csv

  prunekit detect model-int8.onnx --data data/synth/val.json --conf 0.001 -o dets.csv

  prunekit attack model.st --data data/synth/val.json -o adv/ && prunekit detect model-int8.onnx --data adv/val.json --conf 0.001 -o adv-dets.csv
"""


@app.command("detect", epilog=EXAMPLE)
def detect_cmd(
    model: ModelArg = None,
    data: Annotated[Path | None, typer.Option(help="COCO JSON of the images.",
                                              show_default=False)] = None,
    images: Annotated[Path | None, typer.Option(help="A folder of images (without --data), "
                                                "or the image root for --data.",
                                                show_default=False)] = None,
    conf: Annotated[float, typer.Option(help="Score threshold; 0.5 is the paper's, use 0.001 "
                                        "for mAP.")] = 0.5,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold.")] = 0.45,
    max_det: Annotated[int, typer.Option(help="Detections kept per image.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    workers: WorkersOpt = 0,
    attack: Annotated[str | None, typer.Option(help="Attack each image first: pgd or fgsm.",
                                               show_default=False)] = None,
    eps: EpsOpt = None,
    alpha: AlphaOpt = None,
    steps: StepsOpt = None,
    loss: LossOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="CSV path (default: "
                                                "stdout).", show_default=False)] = None,
) -> None:
    """Detect objects and write the detections CSV (boxes in original-image pixels).

    MODEL is a checkpoint or an ONNX file `prunekit export` wrote, run by onnxruntime (CPU)
    with the checkpoint's own input transform and post-processing. A file is not attacked
    (no gradients through it): detect with it the images `prunekit attack` wrote on its source
    checkpoint (a transferred attack)."""
    from prunekit.detect import detect_dataset
    from prunekit.detections import DetectionWriter
    from prunekit.onnxfile import OnnxFile, transferred_attack

    check_output(output)
    ck = read_model(model)
    config = attack_config(attack, method_flag="--attack", eps=eps, alpha=alpha, steps=steps,
                           loss=loss)
    total, ids, results = detect_dataset(ck, data=data, images=images, conf=conf, iou=iou,
                                         max_det=max_det, batch_size=batch_size,
                                         workers=workers, device=device, threads=threads,
                                         attack=config, seed=seed)
    if isinstance(ck, OnnxFile):
        _say_what_runs(ck, transferred_attack(data) if data is not None else None)
    names = {cid: name for cid, name in zip(ids, ck.classes, strict=True)}
    with progress_bar("detect") as bar, DetectionWriter(output) as out:
        task = bar.add_task("detect", total=total, info="")
        for d in results:
            cats = [ids[k] for k in d.labels.tolist()]
            keep = [j for j, c in enumerate(cats) if c >= 0]
            boxes = d.boxes_xyxy[keep]
            xywh = boxes.clone()
            xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
            out.write(d.image_id, d.file_name, xywh, d.scores[keep], [cats[j] for j in keep],
                      names)
            bar.update(task, advance=1, info=f"{out.rows} detections")
    if output is not None:
        console.print(f"wrote {output} ({out.rows:,} detections)", highlight=False)


def _say_what_runs(file, attack: dict | None) -> None:
    """On stderr: the file runs in onnxruntime, and, on attacked images, that the attack was
    made on another model (its source checkpoint), not on the file."""
    console.print(f"detecting with {file.describe()} in onnxruntime (CPU)", highlight=False)
    if attack is not None:
        console.print(f"transferred attack: these images were attacked by {attack.get('method')} "
                      f"(eps {attack.get('eps')}, {attack.get('steps')} steps) on "
                      f"{attack.get('model', 'another model')}, not on {file.name}: gradients "
                      f"do not run through an ONNX file", highlight=False)
