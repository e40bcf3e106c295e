"""KITTI 2D object labels converted to COCO instances JSON.

Reads ``ROOT/label_2/*.txt`` and the matching ``ROOT/image_2/*.png|jpg`` and builds a train and a
val COCO dict that point at the original images (no copies). Each ``file_name`` is relative to the
KITTI ``ROOT`` (``image_2/000123.png``), so the JSON files can move freely; give ``--images ROOT``
to ``finetune``, ``detect`` and ``attack``. (Paths relative to the JSON's own folder would have to
climb out of it with ``..``, which prunekit rejects: a ``file_name`` may not escape its image
root.)

Every annotation keeps KITTI's ``truncated`` and ``occluded`` values and its ``difficulty``
("easy", "moderate", "hard" or "none", by the rules of KITTI's evaluation).

DontCare regions are dropped by default. With ``dontcare="ignore"`` each DontCare box becomes one
``iscrowd = 1`` annotation *per requested class*: pycocotools matches a detection against crowd
regions of its own category only, so a single crowd box would silence false positives of one class
and leave the others counted. One copy per class makes a DontCare region ignore detections of every
class, as KITTI's own evaluation does. Crowd annotations carry no ``segmentation``; training code
must skip ``iscrowd = 1`` annotations (the COCO convention).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from prunekit.errors import DataError, PrunekitError
from prunekit.files import write_atomic

DEFAULT_CLASSES = ("Car", "Pedestrian", "Cyclist")
KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")
FIELDS = ("type", "truncated", "occluded", "alpha", "left", "top", "right", "bottom",
          "height", "width", "length", "x", "y", "z", "rotation_y")
DONTCARE_MODES = ("drop", "ignore")

# KITTI's evaluation levels as (name, min box height px, max occlusion, max truncation), easiest
# first: an object gets the first level it satisfies.
_LEVELS = (("easy", 40.0, 0, 0.15), ("moderate", 25.0, 1, 0.30), ("hard", 25.0, 2, 0.50))
# PNG first: KITTI ships PNG; a JPEG alongside is usually a derived copy.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def difficulty(height: float, occluded: int, truncated: float) -> str:
    """KITTI's difficulty level of an object.

    Args:
        height: Box height in pixels (bottom − top).
        occluded: KITTI occlusion state, 0 (visible) to 3 (unknown).
        truncated: Fraction of the object outside the image, 0 to 1.

    Returns:
        "easy", "moderate", "hard", or "none" when KITTI's evaluation ignores the object.
    """
    for name, min_height, max_occluded, max_truncated in _LEVELS:
        if height >= min_height and occluded <= max_occluded and truncated <= max_truncated:
            return name
    return "none"


def kitti_to_coco(
    root: str | os.PathLike,
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    dontcare: str = "drop",
    val_fraction: float = 0.2,
    seed: int = 0,
    relative_to: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Convert a KITTI object-detection folder to a train and a val COCO dict.

    Args:
        root: Folder holding ``label_2/`` and ``image_2/`` (KITTI's ``training`` folder).
        classes: KITTI types to keep, in category-id order (ids 1..K); other types are dropped.
        dontcare: "drop" to discard DontCare boxes, "ignore" to emit them as ``iscrowd = 1``
            regions, one per class in ``classes``.
        val_fraction: Share of images, in [0, 1), put in the val split.
        seed: Seed of the image split; the same seed and files give the same split.
        relative_to: Folder the image ``file_name`` paths are made relative to, normally the
            folder the JSON files go to; ``root`` when omitted.

    Returns:
        The train and val COCO dicts. Image and annotation ids are unique across both.

    Raises:
        DataError: A missing folder or image, a malformed label line (named by file and line),
            or no object of any requested class.
        PrunekitError: An invalid argument.
    """
    root = Path(root)
    classes = _check_args(classes, dontcare, val_fraction)
    label_dir, image_dir = root / "label_2", root / "image_2"
    for folder in (label_dir, image_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder; ROOT must be a KITTI object folder "
                            f"holding label_2/ and image_2/ (e.g. .../kitti/training)")
    label_files = sorted(label_dir.glob("*.txt"))
    if not label_files:
        raise DataError(f"{label_dir} holds no .txt label files; check ROOT")
    images = _index_images(image_dir)
    base = Path(relative_to) if relative_to is not None else root

    cat_ids = {name: i + 1 for i, name in enumerate(classes)}
    coco_images: list[dict[str, Any]] = []
    anns_by_image: dict[int, list[dict[str, Any]]] = {}
    types: Counter[str] = Counter()
    ann_id = 0
    for image_id, label_path in enumerate(label_files, start=1):
        image_path = images.get(label_path.stem)
        if image_path is None:
            raise DataError(f"{label_path} has no image: expected {image_dir / label_path.stem}"
                            f".png or .jpg; add the image or remove the label file")
        width, height = _image_size(image_path)
        coco_images.append({"id": image_id, "file_name": os.path.relpath(image_path, base),
                            "width": width, "height": height})
        anns: list[dict[str, Any]] = []
        for obj in _read_labels(label_path):
            types[obj["type"]] += 1
            if obj["type"] == "DontCare":
                if dontcare == "ignore":
                    # One crowd region per class: see the module docstring.
                    for cat_id in cat_ids.values():
                        ann_id += 1
                        anns.append(_annotation(obj, ann_id, image_id, cat_id, iscrowd=1))
            elif obj["type"] in cat_ids:
                ann_id += 1
                anns.append(_annotation(obj, ann_id, image_id, cat_ids[obj["type"]], iscrowd=0))
        anns_by_image[image_id] = anns

    if not any(types[name] for name in classes):
        found = ", ".join(f"{t} ({n})" for t, n in sorted(types.items())) or "no objects at all"
        raise DataError(f"no object in {label_dir} is of a requested class "
                        f"({', '.join(classes)}); the labels hold {found}. Pass --classes with "
                        f"types that occur (KITTI's are {', '.join(KITTI_TYPES)})")

    val_ids = _split(len(coco_images), val_fraction, seed)
    categories = [{"id": i, "name": name, "supercategory": "kitti"}
                  for name, i in cat_ids.items()]
    resolved = {"root": str(root), "classes": list(classes), "dontcare": dontcare,
                "val_fraction": val_fraction, "seed": seed}
    splits = []
    for split, keep in (("train", lambda i: i not in val_ids), ("val", lambda i: i in val_ids)):
        imgs = [im for im in coco_images if keep(im["id"])]
        splits.append({
            "info": {"description": f"KITTI 2D objects ({split} split), converted by prunekit",
                     "prunekit": {**resolved, "split": split}},
            "licenses": [],
            "images": imgs,
            "annotations": [a for im in imgs for a in anns_by_image[im["id"]]],
            "categories": categories,
        })
    return splits[0], splits[1]


def convert(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    dontcare: str = "drop",
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Convert KITTI labels and write ``OUT/train.json`` and ``OUT/val.json``.

    Both files are built and serialised before either is written, and each is written atomically,
    so a bad label leaves no output behind. ``OUT`` is created when missing. Image paths in the
    files are relative to ``root`` (give ``--images ROOT`` to the commands that read images).

    Args:
        root: Folder holding ``label_2/`` and ``image_2/``.
        out: Output folder.
        classes: See :func:`kitti_to_coco`.
        dontcare: See :func:`kitti_to_coco`.
        val_fraction: See :func:`kitti_to_coco`.
        seed: See :func:`kitti_to_coco`.

    Returns:
        A summary: the written paths, image and annotation counts per split, objects per class,
        ignore regions, and the requested classes that have no object.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"{out} is a file; OUT must be a folder for train.json and val.json")
    train, val = kitti_to_coco(root, classes=classes, dontcare=dontcare,
                               val_fraction=val_fraction, seed=seed, relative_to=root)
    payloads = {name: json.dumps(d).encode() for name, d in (("train", train), ("val", val))}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in payloads.items():
        paths[name] = out / f"{name}.json"
        write_atomic(paths[name], data)

    cat_names = {c["id"]: c["name"] for c in train["categories"]}
    per_class = Counter({name: 0 for name in cat_names.values()})
    ignore_regions = 0
    for d in (train, val):
        for a in d["annotations"]:
            if a["iscrowd"]:
                ignore_regions += 1
            else:
                per_class[cat_names[a["category_id"]]] += 1
    return {
        "files": {name: str(p) for name, p in paths.items()},
        "images": {"train": len(train["images"]), "val": len(val["images"])},
        "annotations": {"train": len(train["annotations"]), "val": len(val["annotations"])},
        "objects": dict(per_class),
        "ignore_regions": ignore_regions,
        "empty_classes": [name for name, n in per_class.items() if n == 0],
    }


# ------------------------------------------------------------------------------------- helpers


def _check_args(classes: Sequence[str], dontcare: str, val_fraction: float) -> tuple[str, ...]:
    if isinstance(classes, str):  # a bare string would iterate as characters
        classes = [c.strip() for c in classes.split(",")]
    classes = tuple(c for c in classes if c)
    if not classes:
        raise PrunekitError("--classes names none; pass KITTI types such as Car,Pedestrian,Cyclist")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise PrunekitError(f"--classes names {', '.join(duplicates)} more than once; list each "
                            f"class once")
    if "DontCare" in classes:
        raise PrunekitError("DontCare is not an object class; use dontcare='ignore' "
                            "(--dontcare ignore) to keep DontCare regions")
    if dontcare not in DONTCARE_MODES:
        raise PrunekitError(f"--dontcare must be 'drop' or 'ignore', not {dontcare!r}")
    if not (isinstance(val_fraction, int | float) and 0 <= val_fraction < 1):
        raise PrunekitError(f"--val-fraction {val_fraction!r} is outside [0, 1); give e.g. 0.2, "
                            f"or 0 for no val split")
    return classes


def _index_images(image_dir: Path) -> dict[str, Path]:
    """Image path by file stem, preferring PNG when a stem has several (one listing, not a stat
    per label file)."""
    found: dict[str, Path] = {}
    for p in sorted(image_dir.iterdir()):
        suffix = p.suffix.lower()
        if suffix not in _IMAGE_SUFFIXES:
            continue
        current = found.get(p.stem)
        if current is None or (_IMAGE_SUFFIXES.index(suffix)
                               < _IMAGE_SUFFIXES.index(current.suffix.lower())):
            found[p.stem] = p
    return found


def _image_size(path: Path) -> tuple[int, int]:
    # Image.open reads the header only; the pixels are never read.
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}; replace the file") from None


def _read_labels(path: Path) -> list[dict[str, Any]]:
    """The objects of one label file; a malformed line raises DataError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text file; expected KITTI label lines") from None
    objects = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{lineno}"
        # A 16th field is the score of a KITTI results file; it is read past, not kept.
        if len(tokens) not in (15, 16):
            raise DataError(f"{where}: expected 15 space-separated fields ({', '.join(FIELDS)}), "
                            f"found {len(tokens)}; fix or remove the line")
        values = []
        for name, token in zip(FIELDS[1:], tokens[1:15], strict=True):
            try:
                value = float(token)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(f"{where}: {name} is {token!r}, expected a number; fix the line")
            values.append(value)
        truncated, occluded, _alpha, left, top, right, bottom = values[:7]
        if not occluded.is_integer():
            raise DataError(f"{where}: occluded is {tokens[2]!r}, expected an integer 0-3 "
                            f"(or -1 for DontCare); fix the line")
        if right < left or bottom < top:
            raise DataError(f"{where}: box left {tokens[4]}, top {tokens[5]}, right {tokens[6]}, "
                            f"bottom {tokens[7]} has right < left or bottom < top; fix the line")
        objects.append({"type": tokens[0], "truncated": truncated, "occluded": int(occluded),
                        "box": (left, top, right, bottom)})
    return objects


def _annotation(obj: dict[str, Any], ann_id: int, image_id: int, category_id: int,
                iscrowd: int) -> dict[str, Any]:
    left, top, right, bottom = obj["box"]
    w, h = right - left, bottom - top
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [left, top, w, h],
        "area": w * h,
        "iscrowd": iscrowd,
        "truncated": obj["truncated"],
        "occluded": obj["occluded"],
        # DontCare regions are not objects, so they have no level.
        "difficulty": "none" if iscrowd else difficulty(h, obj["occluded"], obj["truncated"]),
    }


def _split(n: int, val_fraction: float, seed: int) -> set[int]:
    """The image ids (1..n) of the val split: round(n · val_fraction) of them, at least one when
    the fraction is positive, never all (train must not be empty)."""
    if val_fraction == 0 or n < 2:
        return set()
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    return set(random.Random(seed).sample(range(1, n + 1), n_val))
