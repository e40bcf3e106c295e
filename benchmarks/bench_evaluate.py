"""How long does `evaluate` take with faster-coco-eval, against pycocotools? (target: ≤ 0.3)

A synthetic validation set as `data synth` writes it (500 images, 160 px, seed 0), and about
18,000 detections like those of a trained detector at confidence 0.001 (what `make baseline`'s
model gives on it): per object a few boxes around it, the best one tight and confident, the rest
looser, lower and sometimes of the confusable class of the same shape, plus low-scored false
positives anywhere; scores in float32 as the detections CSV holds them, so some tie. The ratio is
the median time of the whole `evaluate` call (CSV frame in, metrics out) with faster-coco-eval
over the same with pycocotools, in one process; the metrics must agree to 1e-12 as well.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import pandas as pd

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import median_seconds, report  # noqa: E402

from prunekit.data.coco import read_json  # noqa: E402
from prunekit.data.synth import synth  # noqa: E402
from prunekit.evaluate import METRICS, evaluate  # noqa: E402

SIZE = 160
# The class of the same shape in another colour (synth's colour pairs), else the class itself.
CONFUSED = {1: 2, 2: 1, 3: 4, 4: 3}


def detections(gt: dict, seed: int = 0) -> pd.DataFrame:
    """Detections around ``gt``'s objects plus false positives, about 36 per image."""
    rng = np.random.default_rng(seed)
    anns = gt["annotations"]
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64)
    cats = np.array([a["category_id"] for a in anns])
    images = np.array([a["image_id"] for a in anns])
    copies = rng.integers(2, 7, len(anns))  # boxes per object
    which = np.repeat(np.arange(len(anns)), copies)
    rank = np.concatenate([np.arange(n) for n in copies])  # 0: the best box of its object
    spread = np.where(rank == 0, 0.025, 0.25)[:, None]
    x, y, w, h = boxes[which].T
    jitter = rng.normal(0, 1, (len(which), 4)) * spread
    near = np.stack([x + jitter[:, 0] * w, y + jitter[:, 1] * h,
                     w * np.exp(jitter[:, 2]), h * np.exp(jitter[:, 3])], axis=1)
    score = np.where(rank == 0, rng.beta(6, 2, len(which)), rng.beta(1.2, 6, len(which)))
    cat = cats[which].copy()
    swap = rng.random(len(which)) < np.where(rank == 0, 0.02, 0.3)
    cat[swap] = [CONFUSED.get(int(c), int(c)) for c in cat[swap]]

    image_ids = np.array([img["id"] for img in gt["images"]])
    n_fp = len(image_ids) * 18
    side = np.exp(rng.uniform(np.log(6), np.log(70), (n_fp, 2)))
    far = np.column_stack([rng.uniform(0, SIZE, (n_fp, 2)) - side / 2, side])
    frame = pd.DataFrame({
        "image_id": np.concatenate([images[which], rng.choice(image_ids, n_fp)]),
        "category_id": np.concatenate([cat, rng.choice([c["id"] for c in gt["categories"]],
                                                       n_fp)]),
        "score": np.concatenate([score, rng.beta(1, 12, n_fp)]),
    })
    xywh = np.concatenate([near, far])
    x1y1 = np.clip(xywh[:, :2], 0, SIZE)
    x2y2 = np.clip(xywh[:, :2] + xywh[:, 2:], 0, SIZE)
    frame[["x", "y"]], frame[["w", "h"]] = x1y1, x2y2 - x1y1
    frame = frame[(frame.w > 1) & (frame.h > 1) & (frame.score >= 0.001)]
    # float32, as `detect` writes them; the highest scores first within an image, as it does
    frame = frame.astype({c: np.float32 for c in ("score", "x", "y", "w", "h")})
    frame = frame.astype({c: np.float64 for c in ("score", "x", "y", "w", "h")})
    return frame.sort_values(["image_id", "score"], ascending=[True, False], kind="stable",
                             ignore_index=True)


def main() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        synth(f"{tmp}/synth", train=1, val=500, size=SIZE, seed=0)
        gt = read_json(f"{tmp}/synth/val.json")
    dets = detections(gt)
    results = {}

    def run(backend: str) -> None:
        results[backend] = evaluate(dets, gt, backend=backend)

    slow = median_seconds(lambda: run("pycocotools"), repeats=3)
    fast = median_seconds(lambda: run("faster-coco-eval"), repeats=5)
    a, b = results["faster-coco-eval"], results["pycocotools"]
    same = (all(a[k] == b[k] or (a[k] is not None and b[k] is not None
                                 and abs(a[k] - b[k]) <= 1e-12) for k in METRICS)
            and a["per_class"].keys() == b["per_class"].keys()
            and all(abs(a[d][n] - b[d][n]) <= 1e-12 for d in ("per_class", "per_class_ap50")
                    for n in b[d]))
    identical = all(a[k] == b[k] for k in (*METRICS, "per_class", "per_class_ap50"))
    print(f"{len(dets)} detections on {len(gt['images'])} images ({len(gt['annotations'])} "
          f"objects): mAP {b['map']:.4f}, mAP50 {b['map50']:.4f}; metrics "
          f"{'identical' if identical else 'equal to 1e-12' if same else 'DIFFERENT'}")
    ok = report("evaluate time, faster-coco-eval / pycocotools", fast / slow, 0.3,
                detail=f"{fast:.3f} s against {slow:.3f} s (medians)")
    return ok and same


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
