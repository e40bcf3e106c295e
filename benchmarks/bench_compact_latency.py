"""Real speed-up of compacted filter pruning on yolov3-416 (target: ≥ 0.8 × the MACs reduction).

CPU, batch 1, two threads: latency of the dense model against the compacted filter-pruned model
at 50 % and 75 %, measured with `prunekit.bench` (torch.utils.benchmark, median).
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import report  # noqa: E402

from prunekit import checkpoint  # noqa: E402
from prunekit.bench import bench  # noqa: E402
from prunekit.init import init  # noqa: E402
from prunekit.mask import mask  # noqa: E402
from prunekit.score import l1_filter  # noqa: E402


def main(threads: int = 2, arch: str = "yolov3", img: int = 416) -> bool:
    torch.manual_seed(0)
    dense = init(arch, classes=80, img_size=img)
    dense = checkpoint.from_bytes(checkpoint.to_bytes(dense))
    base = bench(dense, threads=threads, min_run_time=3.0)
    ok = True
    for ratio in (0.5, 0.75):
        scored = dense
        scored.scores = l1_filter(dense.state)
        small = mask(scored, ratio, granularity="filter", compact=True)
        small = checkpoint.from_bytes(checkpoint.to_bytes(small))
        m = bench(small, threads=threads, min_run_time=3.0)
        macs_reduction = base["macs"] / m["macs"]
        speedup = base["latency_ms"] / m["latency_ms"]
        ok &= report(f"{arch}-{img} filter {ratio:.0%}: speedup / macs_reduction",
                     speedup / macs_reduction, 0.8, lower_is_better=False,
                     detail=f"latency {base['latency_ms']:.1f} -> {m['latency_ms']:.1f} ms "
                            f"(x{speedup:.2f}), MACs x{macs_reduction:.2f}, bytes "
                            f"{base['bytes_stored'] / 1e6:.1f} -> {m['bytes_stored'] / 1e6:.1f} MB")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
