"""Real speed-up of compacted filter pruning on yolov3-416 (target: ≥ 0.8 × the MACs reduction).

CPU, batch 1, two threads: latency of the dense model against the compacted filter-pruned model
at 50 % and 75 %, measured with `prunekit.bench.Latency` (torch.utils.benchmark, median) in the
runtime `prunekit bench` picks by default (oneDNN Graph fusion on CPU; `--runtime` to choose).
The three models are prepared once, then timed in turn over several rounds, and each model's
latency is the median of its rounds, so a slow spell of this shared machine falls on all of them
rather than on one side of the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import report  # noqa: E402

from prunekit import checkpoint  # noqa: E402
from prunekit.bench import Latency, bench, resolve_runtime  # noqa: E402
from prunekit.init import init  # noqa: E402
from prunekit.mask import PruneConfig, mask, prunable  # noqa: E402
from prunekit.score import l1_filter  # noqa: E402


def main(threads: int = 2, arch: str = "yolov3", img: int = 416, rounds: int = 9,
         runtime: str = "auto", seconds: float = 1.0) -> bool:
    torch.manual_seed(0)
    dense = checkpoint.from_bytes(checkpoint.to_bytes(init(arch, classes=80, img_size=img)))
    dense.scores = l1_filter(dense.state, prunable(dense))
    models = {0.0: dense}
    for ratio in (0.5, 0.75):
        small = mask(dense, PruneConfig(ratio, granularity="filter", compact=True))
        models[ratio] = checkpoint.from_bytes(checkpoint.to_bytes(small))
    figures = {r: bench(ck, latency=False) for r, ck in models.items()}
    runtime = resolve_runtime(runtime, torch.device("cpu"))
    timed = {r: Latency(ck.build(), torch.rand(1, 3, img, img), runtime, threads=threads,
                        fallback=False) for r, ck in models.items()}
    latencies: dict[float, list[float]] = {r: [] for r in models}
    for _ in range(rounds):
        for ratio, t in timed.items():
            latencies[ratio].append(t.measure(seconds)[0] * 1e3)
    base = figures[0.0]
    base_ms = statistics.median(latencies[0.0])
    ok = True
    for ratio in (0.5, 0.75):
        m = figures[ratio]
        ms = statistics.median(latencies[ratio])
        macs_reduction = base["macs"] / m["macs"]
        speedup = base_ms / ms
        ok &= report(f"{arch}-{img} filter {ratio:.0%}: speedup / macs_reduction",
                     speedup / macs_reduction, 0.8, lower_is_better=False,
                     detail=f"latency {base_ms:.1f} -> {ms:.1f} ms (x{speedup:.2f}), MACs "
                            f"x{macs_reduction:.2f}, bytes {base['bytes_stored'] / 1e6:.1f} -> "
                            f"{m['bytes_stored'] / 1e6:.1f} MB, runtime {runtime}, "
                            f"median of {rounds} rounds of {seconds:g} s")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime", default="auto", help="auto, onednn-graph or eager")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.exit(0 if main(threads=args.threads, rounds=args.rounds, runtime=args.runtime) else 1)
