"""Does the data loader keep a training step fed? (target: loader images/s ≥ training images/s)

On the default synthetic data (3,000 images, 160 px) with training augmentation: the loader's
throughput with one worker process (what `finetune` uses by default), against the images per
second a clean training step of the embedded model consumes (batch 32, two threads).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import median_seconds, report  # noqa: E402

from prunekit.data.coco import CocoDetection, EpochBatches, loader  # noqa: E402
from prunekit.finetune import train_step  # noqa: E402
from prunekit.init import init  # noqa: E402


def main(data: str = "data/synth/train.json", batch: int = 32, workers: int = 1) -> bool:
    if not Path(data).exists():
        print(f"{data} is missing: run `make baseline` (or `prunekit data synth data/synth`)")
        return False
    torch.set_num_threads(2)
    model = init("yolov3-small", dataset=data).build()
    t0 = time.perf_counter()
    ds = CocoDetection(data, model.transform, classes=model.classes, augment=True, cache=True)
    cache_s = time.perf_counter() - t0
    steps = 60
    batches = loader(ds, batch, workers=workers, batch_sampler=EpochBatches(len(ds), batch, 0,
                                                                            0, steps))
    it = iter(batches)
    next(it)  # worker start-up
    t0 = time.perf_counter()
    n = 0
    for batch_images, _, _ in it:
        n += len(batch_images)
    load_rate = n / (time.perf_counter() - t0)
    images, targets, _ = next(iter(loader(ds, batch, shuffle=True)))
    images = images.contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = median_seconds(lambda: train_step(model, images, targets, opt), repeats=5)
    train_rate = batch / step
    return report("loader_images_per_s / training_images_per_s", load_rate / train_rate, 1.0,
                  lower_is_better=False,
                  detail=f"loader {load_rate:.0f} img/s ({workers} worker, augmentation), "
                         f"training step {step * 1e3:.0f} ms = {train_rate:.0f} img/s "
                         f"({1 / step:.2f} steps/s); decoding and caching {len(ds)} images "
                         f"took {cache_s:.1f} s")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
