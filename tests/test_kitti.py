"""KITTI 2D labels → COCO: fields, difficulty, DontCare handling, errors, pycocotools round trip."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from prunekit.cli import app
from prunekit.data.kitti import convert, difficulty, kitti_to_coco
from prunekit.errors import DataError, PrunekitError

# Lines in KITTI's own format (the first is from the devkit's 000000.txt).
PED = "Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01"
CAR = "Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 1.57"
VAN = "Van 0.00 0 -1.57 100.00 150.00 200.00 250.00 2.20 1.90 4.50 -5.00 1.80 20.00 -1.50"
CYC = "Cyclist 0.00 1 -1.00 500.00 160.00 540.00 220.00 1.70 0.60 1.80 2.00 1.60 25.00 -1.00"
DONTCARE = "DontCare -1 -1 -10 50.00 50.00 90.00 80.00 -1 -1 -1 -1000 -1000 -1000 -10"
PERFECT = pytest.approx(1.0, abs=1e-12)


def _obj(kind: str, box: tuple[float, float, float, float], truncated: float = 0.0,
         occluded: int = 0) -> str:
    left, top, right, bottom = box
    return (f"{kind} {truncated:.2f} {occluded} 0.00 {left:.2f} {top:.2f} {right:.2f} "
            f"{bottom:.2f} 1.50 1.60 3.90 1.00 1.50 20.00 0.00")


def _kitti(root: Path, labels: dict[str, list[str]], suffix: str = ".png",
           size: tuple[int, int] = (1242, 375)) -> Path:
    """A KITTI folder with the given label lines and tiny blank images of ``size``."""
    (root / "label_2").mkdir(parents=True)
    (root / "image_2").mkdir()
    for stem, lines in labels.items():
        (root / "label_2" / f"{stem}.txt").write_text("".join(f"{ln}\n" for ln in lines))
        Image.new("RGB", size).save(root / "image_2" / f"{stem}{suffix}")
    return root


def _evaluate(gt: dict, detections: list[dict]) -> float:
    """pycocotools bbox AP@[.5:.95] of ``detections`` against ``gt``.

    A perfect score can come out as 1 − 1e-16: pycocotools divides by ``tp + fp + eps``, so
    callers compare with :data:`PERFECT` rather than ``== 1.0``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(detections), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def _as_detections(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in gt["annotations"] if not a["iscrowd"]]


def test_pedestrian_line_gives_coco_box_area_and_extra_fields(tmp_path):
    root = _kitti(tmp_path / "kitti", {"000000": [PED]})
    train, val = kitti_to_coco(root, val_fraction=0)
    assert val["images"] == [] and val["annotations"] == []
    (ann,) = train["annotations"]
    assert ann["bbox"] == pytest.approx([712.40, 143.00, 98.33, 164.92], abs=1e-6)
    assert ann["area"] == pytest.approx(98.33 * 164.92, abs=1e-6)
    assert ann["iscrowd"] == 0
    assert ann["category_id"] == 2  # Car, Pedestrian, Cyclist → 1, 2, 3
    assert (ann["truncated"], ann["occluded"], ann["difficulty"]) == (0.0, 0, "easy")
    (image,) = train["images"]
    assert (image["width"], image["height"]) == (1242, 375)
    assert image["file_name"] == os.path.join("image_2", "000000.png")
    assert [(c["id"], c["name"]) for c in train["categories"]] == [
        (1, "Car"), (2, "Pedestrian"), (3, "Cyclist")]


def test_classes_filter_and_order_category_ids(tmp_path):
    root = _kitti(tmp_path / "kitti", {"000000": [PED, CAR, VAN, CYC]})
    train, _ = kitti_to_coco(root, val_fraction=0)
    assert sorted(a["category_id"] for a in train["annotations"]) == [1, 2, 3]  # Van dropped

    train, _ = kitti_to_coco(root, classes=["Van", "Car"], val_fraction=0)
    assert [(c["id"], c["name"]) for c in train["categories"]] == [(1, "Van"), (2, "Car")]
    by_cat = {a["category_id"]: a["bbox"][0] for a in train["annotations"]}
    assert by_cat == {1: pytest.approx(100.0), 2: pytest.approx(387.63)}


def test_no_object_of_any_requested_class_is_an_error(tmp_path):
    root = _kitti(tmp_path / "kitti", {"000000": [VAN, DONTCARE]})
    with pytest.raises(DataError, match=r"no object .* requested class.*Van \(1\)"):
        kitti_to_coco(root)
    # A name that never occurs is fine as long as some other requested class does.
    train, _ = kitti_to_coco(root, classes=["Tram", "Van"], val_fraction=0)
    assert len(train["annotations"]) == 1


@pytest.mark.parametrize(("height", "truncated", "occluded", "level"), [
    (40.0, 0.15, 0, "easy"),
    (39.0, 0.00, 0, "moderate"),    # too short for easy
    (60.0, 0.30, 1, "moderate"),
    (60.0, 0.16, 0, "moderate"),    # too truncated for easy
    (25.0, 0.50, 2, "hard"),
    (60.0, 0.00, 2, "hard"),        # too occluded for moderate
    (24.0, 0.00, 0, "none"),        # too short for any level
    (60.0, 0.51, 0, "none"),        # too truncated
    (60.0, 0.00, 3, "none"),        # occlusion unknown
])
def test_difficulty_levels(tmp_path, height, truncated, occluded, level):
    assert difficulty(height, occluded, truncated) == level
    line = _obj("Car", (10.0, 20.0, 110.0, 20.0 + height), truncated, occluded)
    root = _kitti(tmp_path / "kitti", {"000000": [line]})
    train, _ = kitti_to_coco(root, val_fraction=0)
    assert train["annotations"][0]["difficulty"] == level


def test_dontcare_dropped_by_default(tmp_path):
    root = _kitti(tmp_path / "kitti", {"000000": [CAR, DONTCARE]})
    train, _ = kitti_to_coco(root, val_fraction=0)
    assert [a["iscrowd"] for a in train["annotations"]] == [0]


def test_dontcare_ignore_gives_one_crowd_region_per_class(tmp_path):
    root = _kitti(tmp_path / "kitti", {"000000": [CAR, DONTCARE]})
    train, _ = kitti_to_coco(root, dontcare="ignore", val_fraction=0)
    crowd = [a for a in train["annotations"] if a["iscrowd"]]
    assert sorted(a["category_id"] for a in crowd) == [1, 2, 3]
    for a in crowd:
        assert a["bbox"] == pytest.approx([50.0, 50.0, 40.0, 30.0])
        assert a["difficulty"] == "none"
    assert len({a["id"] for a in train["annotations"]}) == len(train["annotations"])


def test_ground_truth_against_itself_scores_ap_1(tmp_path):
    lines = {"000000": [PED, CAR, CYC], "000001": [_obj("Car", (30, 40, 230, 190))],
             "000002": [_obj("Pedestrian", (600, 100, 650, 260), 0.3, 1)]}
    root = _kitti(tmp_path / "kitti", lines)
    train, _ = kitti_to_coco(root, val_fraction=0)
    assert _evaluate(train, _as_detections(train)) == PERFECT


def test_detections_on_dontcare_are_false_positives_only_when_dropped(tmp_path):
    root = _kitti(tmp_path / "kitti", {"000000": [PED, CAR, CYC, DONTCARE]})
    # A confident detection of every class on the DontCare box, ranked above the true ones.
    on_dontcare = [{"image_id": 1, "category_id": c, "bbox": [50.0, 50.0, 40.0, 30.0],
                    "score": 2.0} for c in (1, 2, 3)]

    dropped, _ = kitti_to_coco(root, val_fraction=0)
    assert _evaluate(dropped, _as_detections(dropped) + on_dontcare) == pytest.approx(0.5)

    ignored, _ = kitti_to_coco(root, dontcare="ignore", val_fraction=0)
    assert _evaluate(ignored, _as_detections(ignored) + on_dontcare) == PERFECT


@pytest.mark.parametrize(("line", "message"), [
    ("Car 0.00 0 1.85 387.63 181.54 423.81", "expected 15 space-separated fields"),
    ("Car 0.00 0 1.85 387.63 abc 423.81 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 1.57",
     "top is 'abc', expected a number"),
    ("Car 0.00 0 1.85 423.81 181.54 387.63 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 1.57",
     "right < left"),
    ("Car 0.00 0.5 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 1.57",
     "occluded is '0.5'"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    root = _kitti(tmp_path / "kitti", {"000000": [CAR], "000001": [PED, "", line]})
    with pytest.raises(DataError, match=r"label_2[/\\]000001\.txt:3: ") as e:
        kitti_to_coco(root)
    assert message in str(e.value)


def test_result_files_with_a_score_are_read(tmp_path):
    root = _kitti(tmp_path / "kitti", {"000000": [f"{PED} 0.93"]})
    train, _ = kitti_to_coco(root, val_fraction=0)
    assert train["annotations"][0]["bbox"][0] == pytest.approx(712.40)


def test_jpeg_images_and_sizes_from_the_file(tmp_path):
    root = _kitti(tmp_path / "kitti", {"000000": [CAR]}, suffix=".jpg", size=(64, 48))
    train, _ = kitti_to_coco(root, val_fraction=0)
    assert train["images"][0]["file_name"].endswith("000000.jpg")
    assert (train["images"][0]["width"], train["images"][0]["height"]) == (64, 48)


def test_missing_image_is_named(tmp_path):
    root = _kitti(tmp_path / "kitti", {"000000": [CAR], "000007": [PED]})
    (root / "image_2" / "000007.png").unlink()
    with pytest.raises(DataError, match=r"000007\.txt has no image.*000007\.png or \.jpg"):
        kitti_to_coco(root)


def test_split_is_seeded_deterministic_and_disjoint(tmp_path):
    root = _kitti(tmp_path / "kitti", {f"{i:06d}": [CAR] for i in range(10)}, size=(8, 8))
    train, val = kitti_to_coco(root, val_fraction=0.3, seed=1)
    train_ids = {im["id"] for im in train["images"]}
    val_ids = {im["id"] for im in val["images"]}
    assert len(val_ids) == 3 and train_ids | val_ids == set(range(1, 11))
    assert not train_ids & val_ids
    assert {a["image_id"] for a in val["annotations"]} == val_ids
    assert kitti_to_coco(root, val_fraction=0.3, seed=1) == (train, val)
    other = {im["id"] for im in kitti_to_coco(root, val_fraction=0.3, seed=2)[1]["images"]}
    assert other != val_ids  # a different seed gives a different split here


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_val_fraction_outside_range_is_an_error(tmp_path, fraction):
    root = _kitti(tmp_path / "kitti", {"000000": [CAR]})
    with pytest.raises(PrunekitError, match=r"outside \[0, 1\)"):
        kitti_to_coco(root, val_fraction=fraction)


def test_convert_writes_json_that_resolves_images_relative_to_root(tmp_path):
    root = _kitti(tmp_path / "kitti", {f"{i:06d}": [CAR, PED] for i in range(5)}, size=(8, 8))
    out = tmp_path / "data" / "kitti"
    summary = convert(root, out, val_fraction=0.2)
    assert summary["images"] == {"train": 4, "val": 1}
    assert summary["objects"] == {"Car": 5, "Pedestrian": 5, "Cyclist": 0}
    assert summary["empty_classes"] == ["Cyclist"]
    for split in ("train", "val"):
        data = json.loads((out / f"{split}.json").read_text())
        for im in data["images"]:
            assert im["file_name"].startswith("image_2/")
            assert (root / im["file_name"]).is_file()
    assert not list((root / "image_2").glob("*.json"))  # nothing copied or written beside ROOT


def test_cli_converts(tmp_path, runner):
    root = _kitti(tmp_path / "kitti", {f"{i:06d}": [CAR, DONTCARE] for i in range(5)}, size=(8, 8))
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "kitti", str(root), str(out), "--classes", "Car",
                                 "--dontcare", "ignore", "--val-fraction", "0.4", "--seed", "3"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == {"train": 3, "val": 2}
    assert summary["ignore_regions"] == 5
    assert "wrote" in result.stderr
    train = json.loads((out / "train.json").read_text())
    assert [c["name"] for c in train["categories"]] == ["Car"]
    assert train["info"]["prunekit"]["seed"] == 3
    assert (out / "val.json").exists()


def test_cli_malformed_file_is_one_line_error_and_writes_nothing(tmp_path, runner):
    root = _kitti(tmp_path / "kitti", {"000000": [CAR], "000001": ["Car 1 2 3"]})
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "kitti", str(root), str(out)])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "000001.txt:1:" in lines[0]
    assert not (out / "train.json").exists() and not (out / "val.json").exists()
