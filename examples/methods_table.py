"""Compare scoring methods × granularities on the embedded baseline after a short fine-tune.

    .venv/bin/python examples/methods_table.py runs/baseline/model.st data/synth --steps 60
    .venv/bin/python examples/methods_table.py runs/baseline/model.st data/synth --methods random

For each method (magnitude, l1-filter, random, taylor, deeplift, hydra) and granularity (weight,
filter) it prunes the model at 50 % and 90 % (filter masks compacted), fine-tunes it for a few
clean steps, and prints clean mAP / mAP50 on the validation split (confidence 0.001) as a
markdown table.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from prunekit import checkpoint
from prunekit.evaluate import evaluate
from prunekit.finetune import TrainConfig, finetune
from prunekit.grid import detections_frame
from prunekit.mask import PruneConfig, mask
from prunekit.score import ScoreConfig, score


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--hydra-steps", type=int, default=30)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="magnitude,l1-filter,random,taylor,deeplift,hydra",
                        help="comma-separated scoring methods to compare")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, val = f"{args.data}/train.json", f"{args.data}/val-methods.json"
    from prunekit.grid import subset

    subset(f"{args.data}/val.json", val, args.val_images)
    base = checkpoint.load(args.model)
    rows = []
    for method in args.methods.split(","):
        for gran in ("weight", "filter"):
            scored = None if method == "hydra" else score(
                base, ScoreConfig(method, data=train, batches=4, workers=1), device="cpu")
            for ratio in (0.5, 0.9):
                t0 = time.perf_counter()
                ck = scored
                if method == "hydra":
                    ck = score(base, ScoreConfig("hydra", data=train, steps=args.hydra_steps,
                                                 workers=1),
                               target=PruneConfig(ratio, granularity=gran), device="cpu")
                pruned = mask(ck, PruneConfig(ratio, granularity=gran,
                                              compact=gran == "filter"))
                tuned = finetune(pruned, TrainConfig(train, steps=args.steps, batch_size=32,
                                                     lr=1e-3, workers=1), device="cpu")
                dets = detections_frame(tuned, val, attack=None, batch_size=32, seed=0)
                m = evaluate(dets, val, per_class=False)
                rows.append({"method": method, "granularity": gran, "ratio": ratio,
                             "map": m["map"], "map50": m["map50"],
                             "seconds": time.perf_counter() - t0})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    table = df.pivot_table(index=["method"], columns=["granularity", "ratio"],
                           values=["map", "map50"])
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
