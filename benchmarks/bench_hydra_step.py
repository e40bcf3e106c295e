"""Cost of one HYDRA score-optimisation step over a plain training step (target: ≤ 1.3).

yolov3-small at 160 px, batch 32, two threads, weight granularity at ratio 0.9 (and filter
granularity for information).
"""

from __future__ import annotations

import sys
from itertools import repeat

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import median_seconds, report, targets_from_rows  # noqa: E402

from prunekit.finetune import train_step  # noqa: E402
from prunekit.hydra import hydra  # noqa: E402
from prunekit.init import init  # noqa: E402
from prunekit.mask import PruneConfig  # noqa: E402


def main(batch: int = 32, threads: int = 2) -> bool:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ck = init("yolov3-small", classes=6)
    model = ck.build()
    x = torch.rand(batch, 3, 160, 160)
    rows = [[i, i % 6, 20, 20, 60, 60] for i in range(batch)]
    targets = targets_from_rows(rows, batch, 160)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    plain = median_seconds(lambda: train_step(model, x, targets, opt), repeats=5)
    results = {}
    steps = 6
    for gran in ("weight", "filter"):
        def run(g: str = gran) -> None:
            hydra(ck.build(), repeat((x, targets, None)), PruneConfig(0.9, granularity=g),
                  steps=steps)

        one = median_seconds(run, repeats=3)
        results[gran] = one / steps
    ratio = results["weight"] / plain
    return report("hydra_step / train_step", ratio, 1.3,
                  detail=f"train {plain * 1e3:.0f} ms, hydra(weight) "
                         f"{results['weight'] * 1e3:.0f} ms, hydra(filter) "
                         f"{results['filter'] * 1e3:.0f} ms")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
