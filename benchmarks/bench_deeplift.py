"""DeepLIFT scores for all layers cost a few forward–backward passes, not one pass per layer.

On the embedded default model (yolov3-small, 6 classes, 160 px) and one batch of random images
with a few random boxes each, times one forward–backward of the training loss and one DeepLIFT
scoring of every conv weight (:func:`prunekit.deeplift.deeplift_scores`), interleaved so that
other load on the machine hits both alike, and prints the ratio of the medians:

    .venv/bin/python benchmarks/bench_deeplift.py

On a machine whose cores are busy with other jobs, multi-threaded timings measure thread
scheduling more than work (every parallel op waits for a descheduled thread), and DeepLIFT,
which runs many more ops than a training step, suffers most; the script says so when the
load average shows it, and ``--threads 1`` then gives the fairer ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import report, targets_from_rows  # noqa: E402

from prunekit.deeplift import deeplift_scores  # noqa: E402
from prunekit.init import init  # noqa: E402
from prunekit.models.base import Geometry  # noqa: E402

LIMIT = 3.0


def random_batch(n: int, size: int, classes: int, boxes: int, seed: int = 0):
    """Random images and ``boxes`` random boxes per image, as :func:`prunekit.data.coco.collate`
    makes them."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    rows = []
    for i in range(n):
        wh = torch.empty(boxes, 2).uniform_(size / 16, size / 2, generator=g)
        xy = torch.rand(boxes, 2, generator=g) * (size - wh)
        cls = torch.randint(0, classes, (boxes, 1), generator=g).float()
        rows.append(torch.cat((torch.full((boxes, 1), float(i)), cls, xy, xy + wh), 1))
    return (images, targets_from_rows(torch.cat(rows), n, size),
            [{"geometry": Geometry(size, size)} for _ in range(n)])


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--boxes", type=int, default=3, help="random boxes per image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="captum")

    model = init("yolov3-small", classes=6).build()
    size, classes = model.input_shape[1], model.num_classes
    batch = random_batch(args.batch, size, classes, args.boxes)
    images, targets, _ = batch

    def forward_backward() -> None:
        # One training step's worth of work, as finetune does it (train mode, weight grads).
        model.train()
        model.zero_grad(set_to_none=True)
        loss, _ = model.loss(model(images), targets)
        loss.backward()

    def deeplift() -> None:
        deeplift_scores(model, [batch])

    times: dict[str, list[float]] = {"forward_backward": [], "deeplift_all_layers": []}
    jobs = {"forward_backward": forward_backward, "deeplift_all_layers": deeplift}
    for job in jobs.values():  # warm-up
        job()
    for _ in range(args.repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    fb = statistics.median(times["forward_backward"])
    dl = statistics.median(times["deeplift_all_layers"])
    print(f"yolov3-small {size} px, batch {args.batch}, {args.threads} threads, median of "
          f"{args.repeats}: forward_backward {fb:.3f} s "
          f"({', '.join(f'{t:.2f}' for t in times['forward_backward'])}), "
          f"deeplift_all_layers {dl:.3f} s "
          f"({', '.join(f'{t:.2f}' for t in times['deeplift_all_layers'])})")
    ok = report("deeplift_all_layers / forward_backward", dl / fb, LIMIT)
    load = os.getloadavg()[0]
    if args.threads > 1 and load > os.cpu_count() + 0.5:
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores while timing; other "
              f"jobs share the cores, so {args.threads}-thread timings are contended "
              f"(try --threads 1)")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
