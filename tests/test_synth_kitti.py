"""Synthetic KITTI-format road scenes: KITTI's layout and fields, reproducible, and the real
`data kitti` conversion runs on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from prunekit.cli import app
from prunekit.data.kitti import FIELDS, convert
from prunekit.data.synth_kitti import synth_kitti
from prunekit.errors import DataError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti") / "training"
    summary = synth_kitti(root, images=60, width=384, height=128, seed=3)
    return root, summary


def test_layout_and_fields_are_kittis(scenes):
    root, summary = scenes
    images = sorted((root / "image_2").glob("*.png"))
    labels = sorted((root / "label_2").glob("*.txt"))
    assert [p.stem for p in images] == [p.stem for p in labels] == [f"{i:06d}" for i in
                                                                    range(60)]
    assert Image.open(images[0]).size == (384, 128)
    types = set()
    for path in labels:
        for line in path.read_text().splitlines():
            fields = line.split()
            assert len(fields) == len(FIELDS) == 15
            types.add(fields[0])
            truncated, occluded = float(fields[1]), int(fields[2])
            left, top, right, bottom = map(float, fields[4:8])
            assert 0 <= left <= right <= 383 and 0 <= top <= bottom <= 127
            if fields[0] == "DontCare":
                assert occluded == -1
            else:
                assert 0 <= truncated <= 1 and occluded in (0, 1, 2)
    assert {"Car", "Pedestrian", "Cyclist", "DontCare"} <= types
    assert summary["objects"]["Car"] > summary["objects"]["Cyclist"]


def test_the_same_seed_writes_the_same_bytes(scenes, tmp_path):
    root, _ = scenes
    again = synth_kitti(tmp_path / "again", images=3, width=384, height=128, seed=3)
    assert again["images"] == 3
    for sub, name in (("image_2", "000002.png"), ("label_2", "000002.txt")):
        assert (tmp_path / "again" / sub / name).read_bytes() == (root / sub / name).read_bytes()


def test_conversion_keeps_every_difficulty_level_and_truncation(scenes, tmp_path):
    root, _ = scenes
    summary = convert(root, tmp_path / "coco", dontcare="ignore", val_fraction=0.25, seed=0)
    assert summary["images"] == {"train": 45, "val": 15}
    anns = [a for split in ("train", "val")
            for a in json.loads((tmp_path / "coco" / f"{split}.json").read_text())["annotations"]]
    levels = {a["difficulty"] for a in anns if not a["iscrowd"]}
    assert {"easy", "moderate", "hard"} <= levels
    assert any(a["truncated"] > 0 for a in anns) and any(a["occluded"] > 0 for a in anns)
    assert any(a["iscrowd"] for a in anns)  # DontCare regions as ignore regions
    widths = {a["category_id"]: [] for a in anns}
    for a in anns:
        if not a["iscrowd"]:
            widths[a["category_id"]].append(a["bbox"][2] / a["bbox"][3])
    # cars are wide, pedestrians tall
    assert np.median(widths[1]) > 1.0 > np.median(widths[2])


def test_cli_and_bad_arguments(tmp_path, runner):
    r = runner.invoke(app, ["data", "synth", str(tmp_path / "k"), "--layout", "kitti",
                            "--images", "2", "--width", "128", "--height", "64"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 2
    bad = runner.invoke(app, ["data", "synth", str(tmp_path / "x"), "--layout", "voc"])
    assert bad.exit_code == 1 and "--layout" in bad.stderr
    with pytest.raises(DataError, match="exists"):
        synth_kitti(tmp_path / "k", images=1)
    with pytest.raises(DataError, match="--images"):
        synth_kitti(tmp_path / "y", images=0)
