"""`prunekit export`: write a checkpoint in another tool's format."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from prunekit.cli._app import app
from prunekit.cli._families import FamilyOptionsCommand, with_family_options
from prunekit.cli._io import check_output, console, read_checkpoint
from prunekit.cli._options import CheckpointArg, OutputOpt

EXAMPLE = """Examples:

  prunekit export pruned.st -o pruned.onnx

  prunekit export pruned.st -o pruned-b1.onnx --batch 1 --decode

  prunekit score --method l1-filter model.st | prunekit mask --ratio 0.5 --granularity filter --compact | prunekit export -o small.onnx

  prunekit export detr.st --hf detr-hf/
"""


def _batch(value: str) -> str:
    from prunekit.errors import PrunekitError

    if value != "dynamic" and not (value.isdigit() and int(value) >= 1):
        raise PrunekitError(f"--batch must be 'dynamic' or a whole number of at least 1, got "
                            f"{value!r}")
    return value


@app.command("export", epilog=EXAMPLE, cls=FamilyOptionsCommand)
@with_family_options("export")
def export_cmd(
    model: CheckpointArg = None,
    output: OutputOpt = None,
    batch: Annotated[str, typer.Option("--batch", help="ONNX: 'dynamic' (any batch size) or a "
                                       "fixed batch size.", callback=_batch)] = "dynamic",
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (18 up to the newest "
                                              "onnxruntime runs; default 18).",
                                              show_default=False)] = None,
    decoded: Annotated[bool, typer.Option("--decode", help="ONNX: output decoded boxes (x1 y1 x2 "
                                         "y2, input pixels) and class scores instead of the raw "
                                         "outputs; no threshold, no NMS.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="ONNX: run the file with "
                                         "onnxruntime and refuse to write it when its outputs "
                                         "differ from PyTorch's by more than 1e-4.")] = True,
    *,
    options: dict[str, Any],
) -> None:
    """Export a checkpoint: ONNX (-o FILE.onnx), the deployment form with the input pipeline
    inside, checked against PyTorch with onnxruntime; or a format of the model's family (its
    options below, e.g. --hf DIR, a Hugging Face save_pretrained folder)."""
    from prunekit.errors import PrunekitError
    from prunekit.export import export, export_onnx
    from prunekit.onnx import DEFAULT_OPSET, check_opset

    if bool(options) == (output is not None and str(output) != "-") or len(options) > 1:
        from prunekit.models import registry

        flags = ", ".join(f"{o.flag} ({f.name})" for f, o in registry.options("export"))
        raise PrunekitError(f"which format? give -o FILE.onnx (ONNX) or one of the model "
                            f"families' own formats ({flags}), one of them")
    if options:
        ck = read_checkpoint(model)
        (fmt, dest), = options.items()
        out = export(ck, dest, fmt=fmt)
        console.print(f"wrote {out}", highlight=False)
        return
    check_output(output)
    check_opset(opset if opset is not None else DEFAULT_OPSET)
    ck = read_checkpoint(model)
    with console.status("exporting to ONNX", spinner="dots"):
        done = export_onnx(ck, output, batch=None if batch == "dynamic" else int(batch),
                           opset=opset if opset is not None else DEFAULT_OPSET, decoded=decoded,
                           verify=verify)
    checked = (f"onnxruntime = PyTorch within {max(done.max_error.values()):.1e} at batch "
               f"{done.verified_batch}" if done.verified_batch else "not verified")
    console.print(f"wrote {output} ({len(done.data):,} bytes, opset {done.opset}, batch "
                  f"{done.batch}; {checked})", highlight=False)
