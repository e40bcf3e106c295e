"""The synthetic dataset: reproducible bytes, valid COCO, balanced classes, sane boxes, the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prunekit.cli import app
from prunekit.data import synth as synth_mod
from prunekit.data.synth import CLASSES, COLOUR_PAIRS, luma, synth
from prunekit.errors import DataError


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    synth(out, train=30, val=10, size=96, seed=3)
    return out


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Enough images for statistics, at a small size to stay fast."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = synth(out, train=250, val=50, size=64, seed=0)
    return out, summary


def test_layout_and_summary(small: Path) -> None:
    assert sorted(p.name for p in small.iterdir()) == ["images", "train.json", "val.json"]
    assert len(list((small / "images").glob("*.png"))) == 40
    train = json.loads((small / "train.json").read_text())
    val = json.loads((small / "val.json").read_text())
    assert [c["name"] for c in train["categories"]] == [c.name for c in CLASSES]
    assert [c["id"] for c in train["categories"]] == [1, 2, 3, 4, 5, 6]
    assert train["info"]["seed"] == 3
    ids = [im["id"] for im in train["images"] + val["images"]]
    assert len(ids) == 40 and len(set(ids)) == 40
    ann_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for im in train["images"] + val["images"]:
        assert im["file_name"] == f"images/{im['id']:06d}.png"
        with Image.open(small / im["file_name"]) as img:
            assert (img.size, img.mode, img.format) == ((96, 96), "RGB", "PNG")
    assert not list(small.parent.glob("ds.tmp-*"))


def test_same_seed_same_bytes_other_seed_differs(small: Path, tmp_path: Path) -> None:
    synth(tmp_path / "again", train=30, val=10, size=96, seed=3)
    assert _tree(tmp_path / "again") == _tree(small)
    synth(tmp_path / "other", train=30, val=10, size=96, seed=4)
    other = _tree(tmp_path / "other")
    assert other.keys() == _tree(small).keys()
    assert other["train.json"] != _tree(small)["train.json"]
    assert other["images/000001.png"] != _tree(small)["images/000001.png"]


def test_loads_in_pycocotools(small: Path) -> None:
    from pycocotools.coco import COCO

    for split, n in (("train", 30), ("val", 10)):
        coco = COCO(str(small / f"{split}.json"))
        assert len(coco.getImgIds()) == n
        assert len(coco.getCatIds()) == len(CLASSES)
        assert len(coco.getAnnIds()) >= n  # at least one object per image


def test_boxes_inside_images_and_sized(large: tuple[Path, dict]) -> None:
    out, _ = large
    sides = []
    for split in ("train", "val"):
        data = json.loads((out / f"{split}.json").read_text())
        size = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
        per_image = Counter(a["image_id"] for a in data["annotations"])
        assert set(per_image) == set(size) and max(per_image.values()) <= synth_mod.MAX_OBJECTS
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            width, height = size[a["image_id"]]
            assert x >= 0 and y >= 0 and x + w <= width + 1e-6 and y + h <= height + 1e-6
            assert w >= 1 and h >= 1
            assert a["area"] == pytest.approx(w * h, abs=0.01)
            assert a["iscrowd"] == 0
            sides.append(max(w, h))
    # Log-uniform sides from 8 px to half the image: small, medium and large all occur.
    sides = np.array(sides)
    assert sides.min() < 10 and sides.max() > 0.45 * 64
    assert (sides < 12).mean() > 0.1 and (sides > 24).mean() > 0.1


def test_classes_balanced(large: tuple[Path, dict]) -> None:
    _, summary = large
    counts = Counter(summary["train"]["per_class"]) + Counter(summary["val"]["per_class"])
    mean = sum(counts.values()) / len(CLASSES)
    assert mean > 150
    for name in (c.name for c in CLASSES):
        assert abs(counts[name] - mean) <= 0.2 * mean, (name, counts)


def test_boxes_are_tight_around_the_drawn_shape() -> None:
    """A single object on a flat background: its box is where the pixels changed."""
    rng = np.random.default_rng(0)
    size = 96
    img = np.full((size, size, 3), 128.0, dtype=np.float32)
    for shape, colour in (("circle", synth_mod.RED), ("triangle", (0, 0, 255)),
                          ("cross", (255, 255, 0)), ("square", synth_mod.BLUE)):
        img[:] = 128.0
        sdf, (hx, hy) = synth_mod._shape(shape, 40.0, rng)
        centre = (47.3, 45.8)
        box = (centre[0] - hx, centre[1] - hy, centre[0] + hx, centre[1] + hy)
        synth_mod._draw(img, sdf, centre, box, np.array(colour, np.float32), outline=2.0)
        changed = np.abs(img - 128.0).max(axis=2) > 64  # pixels at least half covered
        ys, xs = np.nonzero(changed)
        assert abs(xs.min() - box[0]) <= 1 and abs(xs.max() + 1 - box[2]) <= 1, shape
        assert abs(ys.min() - box[1]) <= 1 and abs(ys.max() + 1 - box[3]) <= 1, shape


def test_colour_pairs_share_grey_levels_but_not_colour() -> None:
    by_name = {c.name: c for c in CLASSES}
    assert len(CLASSES) >= 6 and len(COLOUR_PAIRS) >= 2
    for a, b in COLOUR_PAIRS:
        ca, cb = by_name[a], by_name[b]
        assert ca.shape == cb.shape
        assert ca.colour is not None and cb.colour is not None
        assert abs(luma(ca.colour) - luma(cb.colour)) < 2  # of 255
        assert np.abs(np.subtract(ca.colour, cb.colour)).max() > 90
    assert luma(synth_mod.RED) == pytest.approx(95.315)


def test_pair_objects_keep_their_colour(large: tuple[Path, dict]) -> None:
    """The fill at the centre of a red or green circle is its class's colour, not the other's."""
    out, _ = large
    data = json.loads((out / "train.json").read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    checked = 0
    for a in data["annotations"]:
        name = CLASSES[a["category_id"] - 1].name
        x, y, w, h = a["bbox"]
        if name not in ("red-circle", "green-circle") or w < 16:
            continue
        # A later object may cover the centre; only uncovered ones say something.
        with Image.open(out / files[a["image_id"]]) as img:
            pixel = np.asarray(img, dtype=np.float32)[int(y + h / 2), int(x + w / 2)]
        dist = {c: np.abs(pixel - np.array(getattr(synth_mod, c.upper()))).max()
                for c in ("red", "green")}
        if min(dist.values()) < 40:
            assert min(dist, key=dist.get) == name.split("-")[0]
            checked += 1
    assert checked > 20


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train": 0}, "--train 0"),
    ({"val": -1}, "--val -1"),
    ({"size": 16}, "--size 16"),
    ({"seed": -2}, "--seed -2"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        synth(tmp_path / "ds", **{"train": 2, "val": 1, "size": 64, **kwargs})
    assert not (tmp_path / "ds").exists()


def test_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="exists; remove it or choose another folder"):
        synth(tmp_path / "full", train=2, val=1, size=64)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    synth(tmp_path / "empty", train=2, val=0, size=64)
    assert json.loads((tmp_path / "empty" / "val.json").read_text())["images"] == []


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(done: int, total: int) -> None:
        if done == 3:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        synth(tmp_path / "ds", train=5, val=2, size=64, progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_progress_counts_every_image(tmp_path: Path) -> None:
    calls = []
    synth(tmp_path / "ds", train=4, val=2, size=64, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 6) for i in range(1, 7)]


def test_cli(runner, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = runner.invoke(app, ["data", "synth", str(out), "--train", "6", "--val", "2",
                                 "--size", "64", "--seed", "5"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["train"]["images"] == 6 and summary["val"]["images"] == 2
    assert "wrote" in result.stderr
    assert (out / "train.json").is_file() and (out / "val.json").is_file()
    assert len(list((out / "images").glob("*.png"))) == 8

    again = runner.invoke(app, ["data", "synth", str(out), "--train", "6"])
    assert again.exit_code == 1
    assert again.stdout == ""
    assert again.stderr.startswith("error: ") and again.stderr.count("\n") == 1
    assert "exists; remove it or choose another folder" in again.stderr

    bad = runner.invoke(app, ["data", "synth", str(tmp_path / "x"), "--size", "8"])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: --size 8")
