"""Compacted models outside PyTorch: onnxruntime against prunekit's default CPU runtime.

yolov3-416 (80 classes), dense and filter-pruned (L1) and compacted at 50 % and 75 %; CPU,
batch 1, two threads. Each model is timed in two runtimes through `prunekit.bench.Latency`:
the default (`onednn-graph`: frozen TorchScript with oneDNN Graph fusion) and `onnxruntime`
(the file `prunekit export` writes, in an onnxruntime CPU session with the same thread count).
All six are prepared once and timed in turn, round after round; each latency is the median of
its rounds. Printed: for each runtime and ratio, latency speed-up ÷ MACs reduction (1.0 would be
a speed-up as large as the arithmetic saved), and the dense model's onnxruntime latency ÷ the
default runtime's (below 1: onnxruntime is faster). These are measurements to read, not
targets; the script exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from prunekit import checkpoint
from prunekit.bench import Latency, bench, resolve_runtime
from prunekit.init import init
from prunekit.mask import PruneConfig, mask, prunable
from prunekit.score import l1_filter

RATIOS = (0.0, 0.5, 0.75)


def main(threads: int = 2, arch: str = "yolov3", img: int = 416, rounds: int = 7,
         seconds: float = 1.0) -> None:
    torch.manual_seed(0)
    dense = checkpoint.from_bytes(checkpoint.to_bytes(init(arch, classes=80, img_size=img)))
    dense.scores = l1_filter(dense.state, prunable(dense))
    models = {0.0: dense}
    for ratio in RATIOS[1:]:
        models[ratio] = mask(dense, PruneConfig(ratio, granularity="filter", compact=True))
    macs = {r: bench(ck, latency=False)["macs"] for r, ck in models.items()}
    runtimes = (resolve_runtime("auto", torch.device("cpu")), "onnxruntime")
    x = torch.rand(1, 3, img, img)
    timed = {(rt, r): Latency(ck.build(), x, rt, threads=threads, fallback=False)
             for rt in runtimes for r, ck in models.items()}
    times: dict[tuple[str, float], list[float]] = {key: [] for key in timed}
    for _ in range(rounds):
        for key, t in timed.items():
            times[key].append(t.measure(seconds)[0] * 1e3)
    ms = {key: statistics.median(v) for key, v in times.items()}
    print(f"{arch}-{img}, batch 1, {threads} threads, median of {rounds} rounds of "
          f"{seconds:g} s", flush=True)
    for rt in runtimes:
        for ratio in RATIOS[1:]:
            speedup = ms[rt, 0.0] / ms[rt, ratio]
            reduction = macs[0.0] / macs[ratio]
            print(f"{rt:>12} filter {ratio:.0%}: speedup / macs_reduction = "
                  f"{speedup / reduction:.3f}  latency {ms[rt, 0.0]:.1f} -> {ms[rt, ratio]:.1f} "
                  f"ms (x{speedup:.2f}), MACs x{reduction:.2f}", flush=True)
    default = runtimes[0]
    for ratio in RATIOS:
        print(f"onnxruntime / {default} latency at {ratio:.0%} = "
              f"{ms['onnxruntime', ratio] / ms[default, ratio]:.3f}  "
              f"({ms['onnxruntime', ratio]:.1f} against {ms[default, ratio]:.1f} ms)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    main(threads=args.threads, rounds=args.rounds)
    sys.exit(0)
