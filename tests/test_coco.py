"""COCO loading: the model's transform and neutral targets, bad datasets, augmentation that
keeps boxes honest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.data.coco import CocoDetection, ImageFolder, collate, loader
from prunekit.errors import DataError
from prunekit.models.base import Target
from prunekit.models.yolov3.transform import Letterbox

L64 = Letterbox(64)


def _dataset(tmp_path, images=3, name="train.json", extra=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"},
                                                           {"id": 7, "name": "b"}]}
    rng = np.random.default_rng(0)
    for i in range(images):
        w, h = 80 + 8 * i, 60
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "img" / f"{i}.png")
        coco["images"].append({"id": i + 1, "file_name": f"img/{i}.png", "width": w,
                               "height": h})
        coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 7,
                                    "bbox": [10, 5, 30, 20], "area": 600, "iscrowd": 0})
    if extra:
        extra(coco)
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return path


def test_dataset_targets_are_neutral(tmp_path):
    ds = CocoDetection(_dataset(tmp_path), L64)
    image, target, record = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    geometry = record["geometry"]
    assert geometry.scale == 64 / 80 and target.geometry == geometry
    assert record["size"] == (80, 60)
    # boxes in original pixels, and where the model input has them
    assert torch.allclose(target.boxes, torch.tensor([[10.0, 5, 40, 25]]))
    assert torch.allclose(target.input_boxes(),
                          geometry.to_input(torch.tensor([[10.0, 5, 40, 25]])))
    assert target.labels.tolist() == [1]  # category 7 is the second class
    images, targets, records = collate([ds[0], ds[1]])
    assert images.dtype == torch.float32 and images.max() <= 1
    assert all(isinstance(t, Target) for t in targets) and len(records) == 2


def test_classes_match_by_name(tmp_path):
    ds = CocoDetection(_dataset(tmp_path), L64, classes=["b", "a"])
    assert ds[0][1].labels.tolist() == [0]
    with pytest.raises(DataError, match="not among the model's classes"):
        CocoDetection(_dataset(tmp_path), L64, classes=["x", "y"])


def test_augmentation_keeps_boxes_inside_and_is_seeded(tmp_path):
    ds = CocoDetection(_dataset(tmp_path, images=4), L64, augment=True)
    a = ds[(2, 123)]
    b = ds[(2, 123)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].boxes, b[1].boxes)
    for seed in range(20):
        _, t, _ = ds[(1, seed)]
        boxes = t.input_boxes()
        assert (boxes >= -1e-4).all() and (boxes <= 64 + 1e-4).all()
        assert len(boxes) == len(t.labels)


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["images"][0].update(file_name="../../etc/passwd"), "escapes the image root"),
    (lambda c: c["images"][0].update(file_name="img/missing.png"), "missing.png"),
])
def test_bad_images_are_named(tmp_path, change, message):
    ds_path = _dataset(tmp_path, extra=change)
    with pytest.raises(DataError, match=message):
        ds = CocoDetection(ds_path, L64)
        ds[0]


def test_unreadable_image_is_named(tmp_path):
    path = _dataset(tmp_path)
    (tmp_path / "img" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"0\.png cannot be read"):
        CocoDetection(path, L64)[0]


def test_not_coco_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match="not a COCO instances file"):
        CocoDetection(bad, L64)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        CocoDetection(bad, L64)


def test_image_folder_and_loader_workers(tmp_path):
    _dataset(tmp_path, images=5)
    folder = ImageFolder(tmp_path / "img", L64)
    assert [im["id"] for im in folder.images] == [1, 2, 3, 4, 5]
    batches = list(loader(folder, 2, workers=1))
    assert [len(r) for _, _, r in batches] == [2, 2, 1]
