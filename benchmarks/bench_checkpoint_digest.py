"""What does checking a checkpoint's digest cost? (target: at most 10 % of the load time)

yolov3-416 (80 classes, about 248 MB): reading the file (from the page cache) and decoding it
with the digest checked (on other threads, while decoding) against the same without the check;
the ratio is the extra time over the unchecked load.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import median_seconds, report  # noqa: E402

from prunekit import checkpoint  # noqa: E402
from prunekit.init import init  # noqa: E402


def main() -> bool:
    torch.set_num_threads(2)
    ck = init("yolov3", classes=80, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "yolov3.st"
        size = checkpoint.save(ck, path)
        checked = median_seconds(lambda: checkpoint.from_bytes(path.read_bytes()), repeats=9)
        unchecked = median_seconds(lambda: checkpoint.from_bytes(path.read_bytes(),
                                                                 verify=False), repeats=9)
    return report("load time with the digest check / without, − 1 (yolov3-416)",
                  checked / unchecked - 1, 0.10,
                  detail=f"{size / 2**20:.0f} MiB: {checked * 1000:.0f} ms checked, "
                         f"{unchecked * 1000:.0f} ms unchecked")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
