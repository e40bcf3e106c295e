"""The built-in synthetic detection dataset: coloured shapes on textured backgrounds, as COCO.

It needs no download and is byte-for-byte reproducible from its seed. Two pairs of classes have the
same shape and differ only in colour, with colours of nearly equal Rec. 601 luma, so a model that
sees grey images cannot tell them apart and the greyscale scenario measures something real.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from prunekit.errors import DataError
from prunekit.files import folder_atomically


@dataclass(frozen=True)
class SynthClass:
    """One class: a shape and, for the colour-pair classes, a fixed fill colour."""

    name: str
    shape: str  # circle, square, triangle or cross
    colour: tuple[int, int, int] | None  # None: a random saturated colour per object


# Saturated colours whose Rec. 601 luma agree within one grey level inside each pair
# (red 95.3 / green 95.8; blue 132.2 / orange 132.1): in grey they are the same object.
RED = (225, 40, 40)
GREEN = (40, 135, 40)
BLUE = (70, 140, 255)
ORANGE = (230, 105, 15)

CLASSES: tuple[SynthClass, ...] = (
    SynthClass("red-circle", "circle", RED),
    SynthClass("green-circle", "circle", GREEN),
    SynthClass("blue-square", "square", BLUE),
    SynthClass("orange-square", "square", ORANGE),
    SynthClass("triangle", "triangle", None),
    SynthClass("cross", "cross", None),
)
"""The classes in category-id order (id = index + 1)."""

COLOUR_PAIRS: tuple[tuple[str, str], ...] = (
    ("red-circle", "green-circle"),
    ("blue-square", "orange-square"),
)
"""Class pairs told apart only by colour."""

MIN_OBJECT = 8.0  # smallest object side in pixels
MAX_OBJECT_FRACTION = 0.5  # largest object side as a fraction of the image side
MAX_OBJECTS = 8
MAX_IOU = 0.3
MAX_HIDDEN = 0.4  # the most of an earlier object's box a later one may cover
_PLACEMENT_TRIES = 30
_COLOUR_JITTER = 10  # brightness jitter of the fixed pair colours, in grey levels
_OUTLINE = np.array([20.0, 20.0, 20.0], dtype=np.float32)


def luma(rgb: tuple[int, int, int] | np.ndarray) -> float | np.ndarray:
    """Rec. 601 grey level of an RGB colour (or an array whose last axis is RGB)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb @ np.array([0.299, 0.587, 0.114])


def synth(
    out: str | Path,
    *,
    train: int = 3000,
    val: int = 500,
    size: int = 160,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the synthetic dataset to ``out``: ``images/*.png``, ``train.json`` and ``val.json``.

    The folder appears complete or not at all: it is built beside ``out`` and renamed at the end.

    Args:
        out: The folder to create; it must not exist, or be empty.
        train: Training images.
        val: Validation images (0 writes an empty ``val.json``).
        size: Image side in pixels; images are square.
        seed: Random seed; the same seed gives byte-identical files.
        progress: Called as ``progress(done, total)`` after each image.

    Returns:
        A summary: the folder, and per split the image and object counts and objects per class.
    """
    out = Path(out)
    _check_args(out, train=train, val=val, size=size, seed=seed)
    summary: dict[str, Any] = {"out": str(out), "size": size, "seed": seed}
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, train + val)

    # PNG encoding, blurring and large numpy operations release the GIL, so threads share the
    # work across cores; each image depends only on (seed, id), so the result does not change.
    pool = ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 8))
    with folder_atomically(out) as tmp:
        try:
            (tmp / "images").mkdir()
            # Image and annotation ids run on across the splits: unique in the whole dataset.
            first_ann = 1
            for split, ids in (("train", range(1, train + 1)),
                               ("val", range(train + 1, train + val + 1))):
                results = pool.map(lambda i: _write_image(tmp, i, seed, size), ids)
                data = _coco(split, results, first_ann=first_ann, seed=seed, size=size,
                             step=step)
                (tmp / f"{split}.json").write_text(json.dumps(data, sort_keys=False) + "\n")
                first_ann += len(data["annotations"])
                summary[split] = _summarise(data)
        finally:
            # On an error, stop queued images rather than render them all before cleaning up.
            pool.shutdown(wait=True, cancel_futures=True)
    return summary


def _coco(split: str, results: Iterable[tuple[int, str, list]], *, first_ann: int, seed: int,
          size: int, step: Callable[[], None]) -> dict[str, Any]:
    """The COCO instances dict of one split from ``(image_id, file_name, objects)`` triples."""
    images, annotations = [], []
    for image_id, file_name, objects in results:
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for class_index, (x, y, w, h) in objects:
            annotations.append({"id": first_ann + len(annotations), "image_id": image_id,
                                "category_id": class_index + 1, "bbox": [x, y, w, h],
                                "area": round(w * h, 2), "iscrowd": 0})
        step()
    return {
        "info": {"description": "prunekit synthetic shapes: two class pairs differ only in "
                 "colour", "contributor": "prunekit data synth", "version": "1",
                 "split": split, "seed": seed, "size": size},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c.name, "supercategory": c.shape}
                       for i, c in enumerate(CLASSES)],
    }


def _summarise(data: dict[str, Any]) -> dict[str, Any]:
    per_class = {c.name: 0 for c in CLASSES}
    for a in data["annotations"]:
        per_class[CLASSES[a["category_id"] - 1].name] += 1
    return {"images": len(data["images"]), "objects": len(data["annotations"]),
            "per_class": per_class}


def _check_args(out: Path, *, train: int, val: int, size: int, seed: int) -> None:
    if train < 1:
        raise DataError(f"--train {train} is too small; give at least 1 training image")
    if val < 0:
        raise DataError(f"--val {val} is negative; give 0 or more validation images")
    if size < 32:
        raise DataError(f"--size {size} is too small; give an image side of at least 32 pixels")
    if size > 4096:
        raise DataError(f"--size {size} is too large; give an image side of at most 4096 pixels")
    if seed < 0:
        raise DataError(f"--seed {seed} is negative; give a seed of 0 or more")
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise DataError(f"{out} exists; remove it or choose another folder")


def _write_image(folder: Path, image_id: int, seed: int, size: int) -> tuple[int, str, list]:
    """Render image ``image_id`` into ``folder``; its id, file name and objects."""
    pixels, objects = _render(np.random.default_rng([seed, image_id]), size)
    file_name = f"images/{image_id:06d}.png"
    # The pixel noise leaves nothing for string matching to find: Huffman coding alone gives
    # files as small as zlib's default strategy, in half the time.
    Image.fromarray(pixels).save(folder / file_name, format="PNG", compress_level=1,
                                 compress_type=Image.HUFFMAN_ONLY)
    return image_id, file_name, objects


def _render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list]:
    """One image (uint8 HxWx3) and its objects as ``(class_index, [x, y, w, h])``."""
    img = _background(rng, size)
    objects: list[tuple[int, list[float]]] = []
    boxes: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        class_index = int(rng.integers(len(CLASSES)))
        cls = CLASSES[class_index]
        # Log-uniform sides give as many small objects as large ones.
        side = math.exp(rng.uniform(math.log(MIN_OBJECT), math.log(MAX_OBJECT_FRACTION * size)))
        sdf, half = _shape(cls.shape, side, rng)
        for _ in range(_PLACEMENT_TRIES):
            cx = rng.uniform(half[0], size - half[0])
            cy = rng.uniform(half[1], size - half[1])
            box = (cx - half[0], cy - half[1], cx + half[0], cy + half[1])
            if all(_acceptable(box, earlier) for earlier in boxes):
                break
        else:
            continue  # no room left for this one
        colour = _colour(cls, rng)
        _draw(img, sdf, (cx, cy), box, colour, outline=max(1.0, 0.07 * side))
        boxes.append(box)
        # Rounding the corners (not x and w) keeps the rounded box inside the image.
        x0, y0 = round(max(box[0], 0.0), 2), round(max(box[1], 0.0), 2)
        x1, y1 = round(min(box[2], float(size)), 2), round(min(box[3], float(size)), 2)
        objects.append((class_index, [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]))
    # Per-pixel sensor-like noise. The sum of three uniform bytes (mean 382.5, sd 128) is close to
    # Gaussian and five times cheaper to draw than numpy's normal variates.
    sigma = np.float32(rng.uniform(2.0, 8.0) / 128)
    noise = rng.integers(0, 256, size=(3, *img.shape), dtype=np.uint8).sum(axis=0, dtype=np.int16)
    img += (noise - np.float32(382.5)) * sigma
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), objects


def _acceptable(new: tuple[float, ...], earlier: tuple[float, ...]) -> bool:
    """Whether ``new`` may be drawn over ``earlier``: low IoU, and ``earlier`` stays visible."""
    iw = min(new[2], earlier[2]) - max(new[0], earlier[0])
    ih = min(new[3], earlier[3]) - max(new[1], earlier[1])
    if iw <= 0 or ih <= 0:
        return True
    inter = iw * ih
    a_new = (new[2] - new[0]) * (new[3] - new[1])
    a_old = (earlier[2] - earlier[0]) * (earlier[3] - earlier[1])
    return inter / (a_new + a_old - inter) <= MAX_IOU and inter / a_old <= MAX_HIDDEN


Sdf = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _shape(shape: str, side: float, rng: np.random.Generator) -> tuple[Sdf, tuple[float, float]]:
    """A signed distance function (positive inside, centred on 0) and the half extents of the
    shape's tight box, for a shape whose larger extent is ``side``."""
    h = side / 2
    if shape == "circle":
        return (lambda x, y: h - np.sqrt(x * x + y * y)), (h, h)
    if shape == "square":
        return (lambda x, y: h - np.maximum(np.abs(x), np.abs(y))), (h, h)
    if shape == "cross":
        arm = h * rng.uniform(0.28, 0.4)  # half the arm thickness

        def cross(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            ax, ay = np.abs(x), np.abs(y)
            return np.maximum(np.minimum(h - ax, arm - ay), np.minimum(arm - ax, h - ay))

        return cross, (h, h)
    if shape == "triangle":
        # An equilateral triangle at a random rotation, scaled so its box's larger side is `side`.
        angles = rng.uniform(0, 2 * math.pi) + np.arange(3) * (2 * math.pi / 3)
        v = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        lo, hi = v.min(axis=0), v.max(axis=0)
        v = (v - (lo + hi) / 2) * (side / (hi - lo).max())
        half = (float((v[:, 0].max() - v[:, 0].min()) / 2),
                float((v[:, 1].max() - v[:, 1].min()) / 2))
        # Inward unit normals of the counter-clockwise edges.
        edges = np.roll(v, -1, axis=0) - v
        normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        offsets = (normals * v).sum(axis=1)

        def triangle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            d = [x * normals[i, 0] + y * normals[i, 1] - offsets[i] for i in range(3)]
            return np.minimum(np.minimum(d[0], d[1]), d[2])

        return triangle, half
    raise ValueError(f"unknown shape {shape!r}")


def _colour(cls: SynthClass, rng: np.random.Generator) -> np.ndarray:
    if cls.colour is not None:
        jitter = rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER)
        return np.clip(np.array(cls.colour, dtype=np.float32) + jitter, 0, 255)
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    return np.array([r, g, b], dtype=np.float32) * 255


def _draw(img: np.ndarray, sdf: Sdf, centre: tuple[float, float], box: tuple[float, ...],
          colour: np.ndarray, outline: float) -> None:
    """Paint a filled shape with a dark outline in place, antialiased from its distance field."""
    size = img.shape[0]
    x0, y0 = max(int(box[0]) - 1, 0), max(int(box[1]) - 1, 0)
    x1, y1 = min(int(math.ceil(box[2])) + 1, size), min(int(math.ceil(box[3])) + 1, size)
    # Distances at pixel centres; clipping d + 0.5 to [0, 1] approximates pixel coverage, so the
    # painted extent matches the geometric box.
    xs = np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - centre[0])
    ys = np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - centre[1])
    d = sdf(xs[None, :], ys[:, None])
    shape_alpha = np.clip(d + 0.5, 0, 1)[..., None]
    fill_alpha = np.clip(d - outline + 0.5, 0, 1)[..., None]
    patch = img[y0:y1, x0:x1]
    patch += (_OUTLINE - patch) * shape_alpha
    patch += (colour - patch) * fill_alpha


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted low-frequency colour noise with soft blobs and a few lines (float32 HxWx3)."""
    # Low saturation keeps every background colour far from the saturated object colours.
    k = int(rng.integers(3, 7))
    base = rng.uniform(70, 190)
    tint = rng.normal(0, 12, size=3)
    grid = base + tint + rng.normal(0, 28, size=(k, k, 1)) + rng.normal(0, 10, size=(k, k, 3))
    # The smooth layers are built at half the size, a quarter of the pixels to blur.
    half = size // 2
    bg = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize(
        (half, half), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(0, 5))):
        r = half * rng.uniform(0.05, 0.2)
        cx, cy = rng.uniform(0, half, size=2)
        rx, ry = r * rng.uniform(0.6, 1.6), r * rng.uniform(0.6, 1.6)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_muted(rng))
    # Soft-edged blobs are texture; sharp-edged ones would look like objects without labels.
    bg = bg.filter(ImageFilter.GaussianBlur(radius=half / 40))
    bg = bg.resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(0, 5))):
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        draw.line([x0, y0, x1, y1], fill=_muted(rng), width=int(rng.integers(1, 4)))
    return np.asarray(bg, dtype=np.float32).copy()


def _muted(rng: np.random.Generator) -> tuple[int, int, int]:
    grey = rng.uniform(50, 210)
    return tuple(int(np.clip(grey + rng.normal(0, 15), 0, 255)) for _ in range(3))
