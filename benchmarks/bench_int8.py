"""Pruned + INT8 on onnxruntime: the fastest CPU deployment (issue 27).

yolov3-416 (80 classes): dense, and filter-pruned (L1) and compacted at 50 % and 75 %, each
exported as `prunekit export` writes it, float and static INT8 (`export --int8`'s quantization:
QDQ, per-channel weights, the family's plan; calibrated here on a few random images, which sets
the ranges but not the speed), all timed in one onnxruntime CPU session each as prunekit opens
the file (INT8 files without the NCHWc layout: :func:`prunekit.onnx.session`), batch 1, two
threads, beside the dense model in PyTorch eager mode. Deformable DETR (`deformable-detr`, the
reference, at KITTI's 375 × 1242), dense and 50 % compacted, float and INT8 in onnxruntime.
Every model is prepared once and timed in turn, round after round (median of rounds), so a slow
spell of the machine falls on all of them.

`--weight-bits 8` times the files `export --int8 --weight-bits 8` writes, for CPUs with VNNI or
AMX: the full int8 range, and each convolution on the faster of onnxruntime's two integer
kernels on this CPU (:mod:`prunekit.quantize`).

Targets (printed with `ok` or `MISSED`): INT8 ÷ float latency speed-up ≥ 2 for yolov3-416 dense
and 50 % compacted; 75 % compacted + INT8 against the dense float model in PyTorch eager ≥ 25.
Deformable DETR's INT8 speed-up is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import report  # noqa: E402

from prunekit import checkpoint, onnx, quantize  # noqa: E402
from prunekit.bench import Latency, count_macs  # noqa: E402
from prunekit.device import cpu_info, int8_dot_products  # noqa: E402
from prunekit.init import init  # noqa: E402
from prunekit.mask import PruneConfig, mask, prunable  # noqa: E402
from prunekit.onnxfile import from_file_bytes  # noqa: E402
from prunekit.score import l1_filter  # noqa: E402


def int8_bytes(model, data: bytes, images: int = 4, weight_bits: int = 7,
               threads: int = 2) -> bytes:
    """``data`` quantized with the family's plan, calibrated on random images (8-bit weights:
    each convolution on the kernel that times faster here, at ``threads``)."""
    g = torch.Generator().manual_seed(0)
    names = [i for i in model.graph(decoded=False).inputs]

    def feeds():
        for _ in range(images):
            x = torch.rand(1, *model.input_shape, generator=g)
            yield {n: v.numpy() for n, v in zip(names, model.graph_feeds(x), strict=True)}

    done = quantize.quantize(data, model.quantization(), feeds, images,
                             weight_bits=weight_bits, threads=threads)
    return _as_int8(done.data)


def _as_int8(data: bytes) -> bytes:
    import onnx as onnx_lib

    proto = onnx_lib.load_from_string(data)
    for p in proto.metadata_props:
        if p.key == "prunekit.precision":
            p.value = "int8"
    return proto.SerializeToString()


def variants(ck: checkpoint.Checkpoint, name: str, x: torch.Tensor, threads: int,
             weight_bits: int) -> dict:
    """Float and INT8 files of ``ck``, ready to time, by name."""
    model = ck.build()
    exported = onnx.export(model, batch=1, verify=False, name=name).data
    int8 = int8_bytes(model, exported, weight_bits=weight_bits, threads=threads)
    out = {}
    for kind, data in (("float", exported), ("int8", int8)):
        runner = from_file_bytes(data, f"{name}-{kind}.onnx").build(threads=threads)
        out[f"{name} {kind}"] = Latency(runner, x, "onnxruntime", threads=threads,
                                        fallback=False)
    return out


def cpu_int8() -> str:
    """The CPU and its 8-bit dot-product instructions, which set the INT8 speed-up onnxruntime
    can reach: with AVX-512 VNNI (or AVX-VNNI, AMX) one instruction multiplies and adds four
    uint8 × int8 pairs; with AVX2 alone it takes two or three, about twice the float FMA's
    throughput at most."""
    info = cpu_info("model name", "flags")
    if info is None:
        return "CPU unknown"
    flags = info["flags"].split()
    dot = int8_dot_products() or []
    widest = next((f for f in ("avx512f", "avx2", "sse4_1") if f in flags), "no SIMD found")
    model = info["model name"] or "unknown"
    return f"CPU {model}: {widest}, {', '.join(dot) if dot else 'no VNNI'}"


def timed(models: dict, rounds: int, seconds: float) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for key, t in models.items():
            times[key].append(t.measure(seconds)[0] * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def yolo(threads: int, rounds: int, seconds: float, weight_bits: int) -> bool:
    torch.manual_seed(0)
    dense = checkpoint.from_bytes(checkpoint.to_bytes(init("yolov3", classes=80, img_size=416)))
    dense.scores = l1_filter(dense.state, prunable(dense))
    cks = {"dense": dense,
           **{f"{r:.0%}": mask(dense, PruneConfig(r, granularity="filter", compact=True))
              for r in (0.5, 0.75)}}
    x = torch.rand(1, 3, 416, 416)
    models = {"dense eager": Latency(dense.build(), x, "eager", threads=threads,
                                     fallback=False)}
    for name, ck in cks.items():
        models.update(variants(ck, name, x, threads, weight_bits))
    macs = {name: count_macs(ck.build())[0] for name, ck in cks.items()}
    ms = timed(models, rounds, seconds)
    print(f"yolov3-416, batch 1, {threads} threads, onnxruntime "
          f"{__import__('onnxruntime').__version__}, INT8 with {weight_bits}-bit weights, median "
          f"of {rounds} rounds of {seconds:g} s; {cpu_int8()}")
    print("| model | MACs | eager float | onnxruntime float | onnxruntime INT8 | INT8 speed-up |")
    print("|---|---|---|---|---|---|")
    for name in cks:
        eager = f"{ms['dense eager']:.1f} ms" if name == "dense" else ""
        print(f"| {name} | {macs[name] / 1e9:.2f} G | {eager} | {ms[f'{name} float']:.1f} ms | "
              f"{ms[f'{name} int8']:.1f} ms | ×{ms[f'{name} float'] / ms[f'{name} int8']:.2f} |")
    ok = True
    for name in ("dense", "50%"):
        ok &= report(f"yolov3-416 {name}: onnxruntime float / INT8 latency",
                     ms[f"{name} float"] / ms[f"{name} int8"], 2.0, lower_is_better=False)
    ok &= report("yolov3-416: dense eager float / (75 % compacted + INT8, onnxruntime)",
                 ms["dense eager"] / ms["75% int8"], 25.0, lower_is_better=False,
                 detail=f"{ms['dense eager']:.1f} -> {ms['75% int8']:.2f} ms; compaction "
                        f"alone x{ms['dense eager'] / ms['75% float']:.1f} (float onnxruntime)")
    return ok


def detr(threads: int, rounds: int, seconds: float, weight_bits: int) -> None:
    torch.manual_seed(0)
    dense = init("deformable-detr", classes=3)
    dense.input["size"] = [375, 1242]
    dense.scores = l1_filter(dense.state, prunable(dense))
    cks = {"detr dense": dense,
           "detr 50%": mask(dense, PruneConfig(0.5, granularity="filter", compact=True))}
    x = torch.rand(1, 3, 375, 1242)
    models = {}
    for name, ck in cks.items():
        models.update(variants(ck, name, x, threads, weight_bits))
    ms = timed(models, rounds, seconds)
    print(f"deformable-detr 375x1242, batch 1, {threads} threads, INT8 with {weight_bits}-bit "
          f"weights, median of {rounds} rounds")
    for name in cks:
        speedup = ms[f"{name} float"] / ms[f"{name} int8"]
        print(f"{name}: onnxruntime float / INT8 latency = {speedup:.3f}  "
              f"({ms[f'{name} float']:.0f} -> {ms[f'{name} int8']:.0f} ms)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--skip-detr", action="store_true")
    parser.add_argument("--weight-bits", type=int, choices=quantize.WEIGHT_BITS, default=7,
                        help="8: for CPUs with VNNI or AMX; each convolution also on the "
                             "faster of onnxruntime's two integer kernels here")
    args = parser.parse_args()
    np.random.seed(0)
    ok = yolo(args.threads, args.rounds, args.seconds, args.weight_bits)
    if not args.skip_detr:
        detr(args.threads, max(3, args.rounds // 2), 2 * args.seconds, args.weight_bits)
    sys.exit(0 if ok else 1)
