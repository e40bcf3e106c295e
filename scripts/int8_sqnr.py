"""Where an INT8 export loses accuracy: the signal-to-quantization-noise ratio (dB) of every
quantized tensor of ``export --int8``'s graph against the float graph's, with onnxruntime's
``qdq_loss_debug`` (issue 27's diagnosis of Deformable DETR).

    .venv/bin/python scripts/int8_sqnr.py runs/detr-baseline/robust.st \\
        data/kitti-synth/coco/train.json --images data/kitti-synth/training

Calibrates on ``--calib`` images of DATA (every other one from the first), compares on
``--check`` others, and prints the tensors whose own quantization is worst (``own``: the
tensor before and after its QuantizeLinear/DequantizeLinear pair) and where the accumulated
error (``acc``: the INT8 graph's tensor against the float graph's) drops by more than 3 dB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx as onnx_lib
import torch
from onnxruntime.quantization import qdq_loss_debug as debug

from prunekit import checkpoint, onnx, quantize
from prunekit.data.coco import CocoDetection
from prunekit.errors import PrunekitError
from prunekit.export import _calibration_feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--images", default=None)
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--check", type=int, default=8)
    parser.add_argument("--calib-method", default=quantize.DEFAULT_METHOD)
    args = parser.parse_args()
    torch.set_num_threads(2)
    try:
        report(args)
    except PrunekitError as e:
        sys.exit(f"error: {e}")


def report(args: argparse.Namespace) -> None:
    quantize.check_method(args.calib_method)
    if args.calib < 1 or args.check < 1:
        raise PrunekitError("--calib and --check must be at least 1 image each")
    ck = checkpoint.load(args.model)
    model = ck.build()
    exported = onnx.export(model, name=ck.name)
    data = CocoDetection(args.data, model.transform, images=args.images, classes=model.classes)
    if 2 * max(args.calib, args.check) > len(data):
        raise PrunekitError(f"{args.data} has {len(data)} images: --calib and --check take "
                            f"every other one, so give at most {len(data) // 2} each")
    calib = list(range(0, 2 * args.calib, 2))
    check = list(range(1, 2 * args.check, 2))
    names = exported.graph.inputs
    done = quantize.quantize(exported.data, model.quantization(),
                             _calibration_feeds(model, data, calib, names, 1), len(calib),
                             method=args.calib_method)
    activations = {}
    with tempfile.TemporaryDirectory(prefix="prunekit-sqnr-") as folder:
        tmp = Path(folder)
        for kind, blob in (("float", exported.data), ("int8", done.data)):
            (tmp / f"{kind}.onnx").write_bytes(blob)
            debug.modify_model_output_intermediate_tensors(tmp / f"{kind}.onnx",
                                                           tmp / f"{kind}-all.onnx")
            reader = quantize._Reader(_calibration_feeds(model, data, check, names, 1),
                                      len(check))
            reader.set_range(0, len(check))
            activations[kind] = debug.collect_activations(str(tmp / f"{kind}-all.onnx"), reader)
    errors = debug.compute_activation_error(
        debug.create_activation_matching(activations["int8"], activations["float"]))
    graph = onnx_lib.load_from_string(exported.data).graph
    where = {o: (i, n.op_type, (quantize._scopes(n)[-2:-1] or [""])[0].removeprefix("net."))
             for i, n in enumerate(graph.node) for o in n.output}
    rows = sorted((where[t][0], t, *where[t][1:], e["qdq_err"], e.get("xmodel_err"))
                  for t, e in errors.items() if t in where)
    print(f"{len(rows)} quantized tensors; worst own quantization:")
    for _, t, op, scope, own, acc in sorted(rows, key=lambda r: r[4])[:15]:
        print(f"  own {own:5.1f} dB  acc {acc:5.1f} dB  {op:<10} {scope or t}")
    print("accumulated error, drops of more than 3 dB along the graph:")
    last = None
    for _, t, op, scope, _own, acc in rows:
        if last is not None and last - acc > 3:
            print(f"  {last:5.1f} -> {acc:5.1f} dB  {op:<10} {scope or t}")
        last = acc
    if last is not None:
        print(f"last quantized tensor: {last:.1f} dB")


if __name__ == "__main__":
    main()
