"""`prunekit bench`: measure a checkpoint."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer

from prunekit.cli._app import app
from prunekit.cli._io import console, read_model
from prunekit.cli._options import DeviceOpt, ModelArg, ThreadsOpt, refuse_given

EXAMPLE = """Examples:

  prunekit bench pruned.st --threads 2

  prunekit bench yolov3.st --device cuda --batch 16

  prunekit bench pruned.st --runtime eager

  prunekit bench pruned.st --runtime onnxruntime --threads 2

  prunekit init yolov3-tiny --classes 80 | prunekit bench --no-latency

  prunekit bench pruned-int8.onnx --threads 2 --batch 1

  prunekit bench model.st --runtime onnxruntime --format csv > speed.csv; prunekit bench model.onnx --format csv | tail -n 1 >> speed.csv
"""


class Format(str, Enum):
    json = "json"
    csv = "csv"


@app.command("bench", epilog=EXAMPLE)
def bench_cmd(
    ctx: typer.Context,
    model: ModelArg = None,
    device: DeviceOpt = "cpu",
    batch: Annotated[int, typer.Option(help="Images per forward pass.")] = 1,
    threads: ThreadsOpt = None,
    latency: Annotated[bool, typer.Option("--latency/--no-latency",
                                          help="Time the model.")] = True,
    min_time: Annotated[float, typer.Option(help="Seconds of timed runs.")] = 2.0,
    runtime: Annotated[str, typer.Option(
        help="auto (onednn-graph on CPU, eager on CUDA), onednn-graph (TorchScript with "
             "conv, bias, LeakyReLU and residual add fused by oneDNN), eager, or onnxruntime "
             "(CPU: the model's ONNX export in an onnxruntime session; the only one, and "
             "auto's choice, for an .onnx file).")] = "auto",
    fmt: Annotated[Format, typer.Option("--format", help="json (indented), or csv: a header "
                                        "and one row, the same columns for a checkpoint and "
                                        "a file, for one table.")] = Format.json,
) -> None:
    """Print parameters, sparsity, MACs/FLOPs, bytes, latency and throughput as JSON.

    MODEL is a checkpoint, or an ONNX file `prunekit export` wrote (float or INT8), timed in
    onnxruntime with the same fields."""
    from prunekit.bench import bench, format_csv_row

    if not latency:
        refuse_given(ctx, ["min_time"], "with --no-latency (nothing is timed)")
    ck = read_model(model)
    with console.status("benchmarking", spinner="dots"):
        result = bench(ck, device=device, batch=batch, threads=threads, latency=latency,
                       min_run_time=min_time, runtime=runtime)
    typer.echo(format_csv_row(result) if fmt is Format.csv else json.dumps(result, indent=2),
               nl=fmt is Format.json)
