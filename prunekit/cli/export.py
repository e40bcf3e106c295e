"""`prunekit export`: write a checkpoint in another tool's format."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from prunekit.cli._app import app
from prunekit.cli._families import FamilyOptionsCommand, with_family_options
from prunekit.cli._io import check_output, console, read_checkpoint
from prunekit.cli._options import CheckpointArg, OutputOpt, SeedOpt, given, refuse_flags

if TYPE_CHECKING:
    from prunekit.checkpoint import Checkpoint
    from prunekit.export import Int8Config

EXAMPLE = """Examples:

  prunekit export pruned.st -o pruned.onnx

  prunekit export pruned.st -o pruned-b1.onnx --batch 1 --decode

  prunekit score --method l1-filter model.st | prunekit mask --ratio 0.5 --granularity filter --compact | prunekit export -o small.onnx

  prunekit export detr.st --hf detr-hf/

  prunekit export model.st -o model-int8.onnx --int8 --data data/synth/val.json --calib 100
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
    ctx: typer.Context,
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
    int8: Annotated[bool, typer.Option("--int8", help="ONNX: static INT8 (QDQ, per-channel "
                                       "weights), calibrated on --calib images of --data, "
                                       "checked against the float file on the images of "
                                       "--val that did not calibrate.")] = False,
    data: Annotated[Path | None, typer.Option("--data", help="--int8: COCO JSON of the "
                                              "calibration images (the model's own data).",
                                              show_default=False)] = None,
    calib: Annotated[int | None, typer.Option("--calib", help="--int8: calibration images, "
                                              "drawn from --data with --seed (default 100).",
                                              show_default=False)] = None,
    calib_method: Annotated[str | None, typer.Option("--calib-method", help="--int8: minmax "
                                                     "(default), entropy or percentile.",
                                                     show_default=False)] = None,
    weight_bits: Annotated[int | None, typer.Option(
        "--weight-bits", help="--int8: 7 (default; weights within ±64, exact on every CPU) or "
                              "8 (the full int8 range, for CPUs with VNNI: without it "
                              "onnxruntime's kernels saturate on 8-bit weights).",
        show_default=False)] = None,
    val: Annotated[Path | None, typer.Option("--val", help="--int8: COCO JSON of the check "
                                             "(default: --data, less the calibration "
                                             "images).", show_default=False)] = None,
    images: Annotated[Path | None, typer.Option("--images", help="--int8: image root of --data "
                                                "and --val (default: each JSON's folder).",
                                                show_default=False)] = None,
    seed: SeedOpt = 0,
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
    int8_given = list(given(ctx, ["data", "calib", "calib_method", "weight_bits", "val",
                                  "images"]).values())
    if options:
        (fmt, dest), = options.items()
        onnx_given = list(given(ctx, ["batch", "opset", "decoded", "verify", "int8",
                                      "seed"]).values())
        refuse_flags(onnx_given + int8_given,
                     f"with --{fmt.replace('_', '-')} (ONNX export settings)")
        ck = read_checkpoint(model)
        out = export(ck, dest, fmt=fmt)
        console.print(f"wrote {out}", highlight=False)
        return
    check_output(output)
    check_opset(opset if opset is not None else DEFAULT_OPSET)
    if int8:
        config = _int8_config(data, calib, calib_method, val, images, seed, decoded,
                              weight_bits, verify)
    else:
        refuse_flags(int8_given, "without --int8 (INT8 settings)")
    ck = read_checkpoint(model)
    if int8:
        _export_int8(ck, output, config, None if batch == "dynamic" else int(batch),
                     opset if opset is not None else DEFAULT_OPSET)
        return
    with console.status("exporting to ONNX", spinner="dots"):
        done = export_onnx(ck, output, batch=None if batch == "dynamic" else int(batch),
                           opset=opset if opset is not None else DEFAULT_OPSET, decoded=decoded,
                           verify=verify)
    checked = (f"onnxruntime = PyTorch within {max(done.max_error.values()):.1e} at batch "
               f"{done.verified_batch}" if done.verified_batch else "not verified")
    console.print(f"wrote {output} ({len(done.data):,} bytes, opset {done.opset}, batch "
                  f"{done.batch}; {checked})", highlight=False)


def _int8_config(data: Path | None, calib: int | None, method: str | None, val: Path | None,
                 images: Path | None, seed: int, decoded: bool,
                 weight_bits: int | None, verify: bool) -> Int8Config:
    """The INT8 settings, checked before the checkpoint is read."""
    from prunekit.errors import PrunekitError
    from prunekit.export import Int8Config

    if data is None:
        raise PrunekitError("--int8 calibrates on images: give --data DATASET.json (the "
                            "model's own data) and --calib N")
    if decoded:
        raise PrunekitError("--int8 writes the raw outputs (decoding stays in float outside "
                            "the file); leave out --decode")
    if not verify:
        raise PrunekitError("--int8 always checks what it writes (the float graph against "
                            "PyTorch, the INT8 one against the float graph); leave out "
                            "--no-verify")
    given = {"calib": calib, "method": method, "weight_bits": weight_bits}
    return Int8Config(data=str(data), val=str(val) if val is not None else None,
                      images=str(images) if images is not None else None, seed=seed,
                      **{k: v for k, v in given.items() if v is not None}).check()


def _export_int8(ck: Checkpoint, output: Path, config: Int8Config, batch: int | None,
                 opset: int) -> None:
    """Export, then say what was quantized, what stayed in float and what the check measured."""
    from prunekit.export import export_int8

    with console.status(f"INT8: calibrating on {config.calib} images, checking on the rest",
                        spinner="dots"):
        done = export_int8(ck, output, config, batch=batch, opset=opset)
    q = done.quantized
    console.print(f"wrote {output} ({len(done.data):,} bytes, INT8 QDQ, "
                  f"{config.weight_bits}-bit weights, {config.method} calibration on "
                  f"{config.calib} images of {config.data}; float export = "
                  f"PyTorch within {max(done.float.max_error.values()):.1e})", highlight=False)
    console.print("quantized: " + ", ".join(f"{n} {op}" for op, n in q.quantized.items()),
                  highlight=False)
    for what, why in q.kept_float.items():
        console.print(f"kept in float: {what}: {why}", highlight=False)
    if q.matrix_product:
        console.print(f"{len(q.matrix_product)} of {q.quantized.get('Conv', 0)} integer "
                      f"convolutions run on onnxruntime's matrix product (each timed both ways "
                      f"on this CPU; faster there)", highlight=False)
    console.print("INT8 against float, signal-to-noise: " + ", ".join(
        f"{k} {v:.1f} dB" for k, v in done.sqnr_db.items()), highlight=False)
    f, i = done.metrics["float"], done.metrics["int8"]
    console.print(f"on {done.held_out} held-out images of {config.val or config.data} (not "
                  f"used for calibration), confidence 0.001: mAP50 float {f['map50']:.4f}, "
                  f"INT8 {i['map50']:.4f} ({100 * (i['map50'] - f['map50']):+.2f} points); mAP "
                  f"float {f['map']:.4f}, INT8 {i['map']:.4f}", highlight=False)
    _saturation_note(config.weight_bits)


def _saturation_note(weight_bits: int) -> None:
    """8-bit weights on an x86 CPU without VNNI: the figures above are this CPU's, saturated.
    7-bit weights on a CPU with VNNI or AMX: 8-bit ones would run exactly here, and more
    precisely."""
    from prunekit.device import int8_dot_products

    dot = int8_dot_products()
    if weight_bits == 8 and dot == []:
        console.print("note: this CPU has no VNNI, so onnxruntime's kernels may saturate on "
                      "8-bit weights and the figures above may be lower than on a VNNI CPU; "
                      "--weight-bits 7 runs exactly everywhere", highlight=False)
    elif weight_bits == 7 and dot:
        console.print(f"note: this CPU has {', '.join(dot)}: --weight-bits 8 runs exactly "
                      f"here, with one more bit of weight precision; 7-bit files run exactly "
                      f"on every CPU", highlight=False)
