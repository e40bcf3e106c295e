#!/bin/bash
# How legacy.st and expected/ were made, with prunekit 0.1.0 at commit 5bc4bd6 (before the
# family interface). Kept for the record: the files are the fixture, not this script's output
# at any later commit. Run from the repository root: tests/data/legacy/make.sh
set -euo pipefail
PK=.venv/bin/prunekit
HERE=tests/data/legacy
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1
$PK data synth "$T/data" --train 24 --val 8 --size 64 --seed 0 > /dev/null
# A tiny trained model with every feature of the format: masks (packed bits), sparse tensors
# and scores.
$PK init yolov3-small --dataset "$T/data/train.json" --img-size 64 --width 0.0625 --seed 0 \
  | $PK finetune --data "$T/data/train.json" --steps 40 --batch-size 8 --lr 1e-2 --workers 0 \
      --device cpu --seed 0 \
  | $PK score --method magnitude | $PK mask --ratio 0.3 \
  | $PK score --method l1-filter -o "$HERE/legacy.st"
mkdir -p "$HERE/expected"
$PK detect "$HERE/legacy.st" --data "$T/data/val.json" --conf 0.001 --device cpu \
  -o "$HERE/expected/detect.csv"
$PK mask "$HERE/legacy.st" --structured --ratio 0.5 --compact -o "$T/filter.st"
$PK mask "$HERE/legacy.st" --ratio 0.6 --scope global -o "$T/weight.st"
$PK detect "$T/filter.st" --data "$T/data/val.json" --conf 0.001 --device cpu \
  -o "$HERE/expected/detect-filter-0.5.csv"
$PK detect "$T/weight.st" --data "$T/data/val.json" --conf 0.001 --device cpu \
  -o "$HERE/expected/detect-weight-0.6.csv"
.venv/bin/python - "$T" "$HERE/expected/pruned.json" <<'PY'
import hashlib, json, sys
from prunekit import checkpoint
out = {}
for name in ("filter", "weight"):
    ck = checkpoint.load(f"{sys.argv[1]}/{name}.st")
    digest = lambda t: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
    out[name] = {"arch": ck.arch,
                 "state": {k: digest(v) for k, v in ck.state.items()},
                 "masks": {k: digest(v) for k, v in ck.masks.items()}}
open(sys.argv[2], "w").write(json.dumps(out, indent=1, sort_keys=True) + "\n")
PY
