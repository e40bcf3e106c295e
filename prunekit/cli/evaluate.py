"""`prunekit evaluate`: COCO mAP of a detections CSV."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import check_output, console, write_text
from prunekit.cli._options import OutputOpt

EXAMPLE = """Examples:

  prunekit evaluate dets.csv --gt data/synth/val.json

  prunekit evaluate dets.csv --gt val.json --format csv --no-per-class >> results.csv

  prunekit detect pruned.st --data val.json | prunekit evaluate --gt val.json -o metrics.json

  prunekit evaluate dets.csv --gt data/kitti/val.json --difficulty moderate

  prunekit evaluate dets.csv --gt val.json --backend pycocotools
"""


class Format(str, Enum):
    json = "json"
    csv = "csv"


class Backend(str, Enum):
    auto = "auto"
    pycocotools = "pycocotools"
    faster_coco_eval = "faster-coco-eval"


@app.command("evaluate", epilog=EXAMPLE)
def evaluate_cmd(
    gt: Annotated[Path, typer.Option("--gt", help="COCO instances JSON with the ground truth.",
                                     show_default=False)],
    detections: Annotated[str | None, typer.Argument(
        help="Detections CSV; `-` or omitted reads stdin.", show_default=False)] = None,
    fmt: Annotated[Format, typer.Option("--format", help="json (indented), or csv: a header "
                                        "and one row, for aggregating runs.")] = Format.json,
    per_class: Annotated[bool, typer.Option("--per-class/--no-per-class",
                                            help="Report AP and AP50 per category.")] = True,
    difficulty: Annotated[str | None, typer.Option(
        help="KITTI level (easy, moderate, hard): ignore the harder objects of ground truth "
             "converted by `data kitti`.", show_default=False)] = None,
    backend: Annotated[Backend, typer.Option(
        help="COCOeval implementation: pycocotools (the reference), faster-coco-eval (C++, "
             "several times faster), or auto: faster-coco-eval when it is installed and "
             "matches pycocotools on a built-in check case, else pycocotools.")] = Backend.auto,
    output: OutputOpt = None,
) -> None:
    """Score detections with COCOeval: mAP@[.5:.95], mAP50, mAP75, S/M/L, AR, per-class AP.

    Metrics pycocotools cannot compute (-1: no ground truth of that size) are null. The JSON
    records the backend that ran.
    """
    from prunekit.evaluate import evaluate, format_csv_row

    check_output(output)
    with console.status("evaluating", spinner="dots"):
        metrics = evaluate(detections, gt, per_class=per_class, difficulty=difficulty,
                           backend=backend.value)
    text = format_csv_row(metrics) if fmt is Format.csv else json.dumps(metrics, indent=2) + "\n"
    write_text(text, output)
