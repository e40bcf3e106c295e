"""Cost of a PGD-k adversarial training step over a clean step (target: at most 1.15·(k+1)).

The embedded default model (yolov3-small, 160 px) at batch 32 on two threads; random images
with a few boxes each. The adversarial step attacks the batch with PGD-k (eval mode, input
gradients only) and then trains on the clean and adversarial halves in one forward pass.
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import median_seconds, report, targets_from_rows  # noqa: E402

from prunekit.attack import AttackConfig, training_attack  # noqa: E402
from prunekit.finetune import train_step  # noqa: E402
from prunekit.init import init  # noqa: E402


def main(k: int = 5, batch: int = 32, threads: int = 2) -> bool:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = init("yolov3-small", classes=6).build()
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 160, 160).contiguous(memory_format=torch.channels_last)
    rows = []
    for i in range(batch):
        for _ in range(4):
            x1, y1 = torch.randint(0, 120, (2,)).tolist()
            s = int(torch.randint(8, 40, (1,)))
            rows.append([i, int(torch.randint(0, 6, (1,))), x1, y1, x1 + s, y1 + s])
    targets = targets_from_rows(rows, batch, 160)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    adv = training_attack(AttackConfig("pgd", eps=0.05, alpha=0.02, steps=k))
    clean = median_seconds(lambda: train_step(model, x, targets, opt), repeats=5)
    attacked = median_seconds(lambda: train_step(model, x, targets, opt, adv=adv, adv_mix=0.5),
                              repeats=3)
    ratio = attacked / clean
    return report(f"pgd{k}_step / clean_step / (k+1)", ratio / (k + 1), 1.15,
                  detail=f"clean {clean * 1e3:.0f} ms, PGD-{k} {attacked * 1e3:.0f} ms, "
                         f"ratio {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
