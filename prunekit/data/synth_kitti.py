"""Synthetic road scenes written in KITTI's own format, so the real conversion runs offline.

``ROOT/image_2/NNNNNN.png`` and ``ROOT/label_2/NNNNNN.txt`` (15 space-separated fields per
object, KITTI's object-label layout), seeded and byte-for-byte reproducible. A scene is a sky
above a horizon, a road in perspective with lane markings, verges and roadside clutter, and
objects standing on the ground at a random depth, drawn far to near so that near ones hide far
ones:

- ``Car`` (a few labelled ``Van``): a wide body with a cabin, windows and wheels, 1.3-2.6 times
  as wide as tall; ``Pedestrian``: head, torso and legs, about 0.3-0.45; ``Cyclist``: two
  wheels, a frame and a rider, about 0.55-0.9;
- one to six labelled objects, their sizes following the depth (from a fifth of the way to
  the horizon to the bottom of the image), overlapping enough to occlude each other but none
  hidden past recognition (box IoU at most 0.3, at most 60 % of a box covered); objects may
  cross the left or right edge,
  and ``truncated`` is the share of the object's box outside the image;
- ``occluded`` comes from the pixels nearer objects cover: 0 (under 10 % hidden), 1 (under
  50 %), 2 (more); an object more than 95 % hidden is not labelled;
- up to three tiny objects near the horizon (and anything under 8 pixels tall) become
  ``DontCare`` regions, as KITTI marks far objects nobody annotated;
- the 3D fields (dimensions, location, rotation) are plausible values for the class and depth,
  consistent with the box, so every field parses as KITTI's does.

The default image size is KITTI's (1242 × 375). Difficulty levels use KITTI's absolute pixel
heights (40 and 25 px), so smaller images have fewer "easy" objects, as a far camera would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from prunekit.errors import DataError
from prunekit.files import folder_atomically

# (class, probability, height at the bottom of the image as a fraction of the image height,
#  width/height range, metres: height, width, length)
_KINDS = (
    ("Car", 0.58, 0.55, (1.3, 2.6), (1.5, 1.65, 3.9)),
    ("Van", 0.05, 0.70, (1.2, 2.0), (2.1, 1.9, 4.8)),
    ("Pedestrian", 0.22, 0.85, (0.3, 0.45), (1.75, 0.6, 0.8)),
    ("Cyclist", 0.15, 0.80, (0.55, 0.9), (1.7, 0.6, 1.8)),
)
MIN_LABELLED = 8.0  # box height in pixels below which an object is a DontCare region
MAX_OBJECTS = 6
MAX_FAR = 3  # tiny far objects per scene, which nobody labels: DontCare regions
MAX_IOU = 0.3  # most overlap between two labelled objects' boxes
MAX_COVERED = 0.6  # the most of one labelled object's box another may cover
_PLACEMENT_TRIES = 20
_FOCAL_AT_375 = 721.5  # KITTI's focal length in pixels, for 375-pixel-high images
_CAMERA_HEIGHT = 1.65


def synth_kitti(out: str | Path, *, images: int = 2500, width: int = 1242, height: int = 375,
                seed: int = 0, progress: Callable[[int, int], None] | None = None
                ) -> dict[str, Any]:
    """Write ``images`` scenes to ``out/image_2`` and their labels to ``out/label_2``.

    The folder appears complete or not at all (built beside ``out``, renamed at the end).

    Args:
        out: the folder to create (must not exist, or be empty).
        images: number of images.
        width: image width in pixels.
        height: image height in pixels.
        seed: random seed; the same seed gives byte-identical files.
        progress: ``progress(done, total)`` after each image.

    Returns:
        A summary: the folder, the size, and the object count per KITTI type.
    """
    out = Path(out)
    _check_args(out, images=images, width=width, height=height, seed=seed)
    counts: dict[str, int] = {}
    pool = ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 8))
    with folder_atomically(out) as tmp:
        try:
            (tmp / "image_2").mkdir()
            (tmp / "label_2").mkdir()
            rendered = pool.map(lambda i: _write(tmp, i, seed, width, height), range(images))
            for done, types in enumerate(rendered, 1):
                for t in types:
                    counts[t] = counts.get(t, 0) + 1
                if progress is not None:
                    progress(done, images)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return {"out": str(out), "images": images, "width": width, "height": height,
            "seed": seed, "objects": dict(sorted(counts.items()))}


def _check_args(out: Path, *, images: int, width: int, height: int, seed: int) -> None:
    if images < 1:
        raise DataError(f"--images {images} is too small; give at least 1 image")
    if width < 64 or height < 32:
        raise DataError(f"--width {width} --height {height} is too small; give at least 64 × 32")
    if width > 4096 or height > 4096:
        raise DataError(f"--width {width} --height {height} is too large; give at most 4096 "
                        f"pixels a side (KITTI's own images are 1242 × 375)")
    if seed < 0:
        raise DataError(f"--seed {seed} is negative; give a seed of 0 or more")
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise DataError(f"{out} exists; remove it or choose another folder")


def _write(folder: Path, index: int, seed: int, width: int, height: int) -> list[str]:
    """Render scene ``index``; write its image and label file; the types it labels."""
    pixels, lines = _scene(np.random.default_rng([seed, index]), width, height)
    Image.fromarray(pixels).save(folder / "image_2" / f"{index:06d}.png", format="PNG",
                                 compress_level=1)
    (folder / "label_2" / f"{index:06d}.txt").write_text("".join(f"{line}\n" for line in lines))
    return [line.split(" ", 1)[0] for line in lines]


# ------------------------------------------------------------------------------------ scenes


def _scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """One scene (uint8 H×W×3) and its KITTI label lines."""
    horizon = height * rng.uniform(0.38, 0.48)
    road_x = width * rng.uniform(0.35, 0.65)
    road_half = width * rng.uniform(0.3, 0.55)
    image = _background(rng, width, height, horizon, road_x, road_half)
    draw = ImageDraw.Draw(image)
    owners = Image.new("I", (width, height), 0)
    own = ImageDraw.Draw(owners)
    objects: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _ in range(_PLACEMENT_TRIES):
            obj = _place(rng, width, height, horizon, road_x, road_half)
            if all(_apart(obj["box"], o["box"]) for o in objects):
                objects.append(obj)
                break
    objects += [_place(rng, width, height, horizon, road_x, road_half, far=True)
                for _ in range(int(rng.integers(0, MAX_FAR + 1)))]
    objects.sort(key=lambda o: o["bottom"])  # far first: near objects are drawn over them
    for k, obj in enumerate(objects, 1):
        obj["pixels"] = _paint(draw, own, obj, k, rng)
    visible = np.bincount(np.asarray(owners, dtype=np.int64).ravel(),
                          minlength=len(objects) + 1)
    lines = [line for k, obj in enumerate(objects, 1)
             if (line := _label(obj, int(visible[k]), width, height, rng)) is not None]
    array = np.asarray(image, dtype=np.float32)
    noise = rng.normal(0.0, rng.uniform(2.0, 6.0), size=array.shape[:2])[..., None]
    return np.clip(array + noise + 0.5, 0, 255).astype(np.uint8), lines


def _apart(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two labelled objects overlap little enough that both stay recognisable."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return True
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return (inter / (area_a + area_b - inter) <= MAX_IOU
            and inter <= MAX_COVERED * min(area_a, area_b))


def _background(rng: np.random.Generator, width: int, height: int, horizon: float,
                road_x: float, road_half: float) -> Image.Image:
    """Sky, roadside clutter, verges and the road with its markings."""
    ys = np.arange(height, dtype=np.float32)[:, None, None]
    sky_top, sky_low = rng.uniform(150, 215, size=3), rng.uniform(190, 245, size=3)
    sky = sky_top + (sky_low - sky_top) * np.clip(ys / max(horizon, 1.0), 0, 1)
    verge = rng.uniform(60, 130, size=3) * np.array([0.8, 1.0, 0.7])
    depth = np.clip((ys - horizon) / (height - horizon), 0, 1)
    ground = verge * (0.75 + 0.35 * depth)
    array = np.where(ys < horizon, sky, ground) * np.ones((1, width, 1), dtype=np.float32)
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):  # buildings and trees along the horizon
        w = width * rng.uniform(0.04, 0.18)
        h = height * rng.uniform(0.05, 0.3)
        x = rng.uniform(-w / 2, width)
        grey = rng.uniform(60, 170)
        fill = tuple(int(np.clip(grey + rng.normal(0, 12), 0, 255)) for _ in range(3))
        draw.rectangle([x, horizon - h, x + w, horizon + 1], fill=fill)
    road = int(rng.uniform(70, 115))
    near = [(road_x - road_half, height), (road_x + road_half, height)]
    far = [(road_x + width * 0.01, horizon), (road_x - width * 0.01, horizon)]
    draw.polygon(near + far, fill=(road, road, road + 4))
    marks = max(1, int(height * 0.01))
    for t in np.linspace(0.05, 1.0, 9)[::2]:  # dashed centre line in perspective
        y0, y1 = horizon + (height - horizon) * t, horizon + (height - horizon) * (t + 0.06)
        draw.line([(road_x, y0), (road_x, y1)], fill=(225, 225, 215), width=marks)
    return image


def _place(rng: np.random.Generator, width: int, height: int, horizon: float, road_x: float,
           road_half: float, far: bool = False) -> dict[str, Any]:
    """A class, a depth on the ground and a horizontal position for one object (``far``: a
    tiny one near the horizon, left unlabelled as a DontCare region)."""
    r, total = rng.uniform(), 0.0
    for kind in _KINDS:
        total += kind[1]
        if r <= total:
            break
    name, _, at_bottom, aspect, dims = kind
    # Uniform in 1/depth between a fifth of the way to the horizon and the bottom.
    scale = rng.uniform(0.02, 0.06) if far else rng.uniform(0.2, 1.05)
    bottom = horizon + (height - horizon) * scale
    h = max(2.0, height * at_bottom * scale * rng.uniform(0.9, 1.1))
    w = h * rng.uniform(*aspect)
    spread = road_half * scale
    if name in ("Car", "Van"):
        cx = road_x + rng.uniform(-1.1, 1.1) * spread
    else:
        side = rng.choice([-1.0, 1.0])
        cx = road_x + side * spread * rng.uniform(0.8, 1.6)
    if rng.uniform() < 0.15:  # some cross the image edge
        cx = rng.choice([0.0, float(width)]) + rng.uniform(-0.4, 0.4) * w
    return {"type": name, "dims": dims, "box": (cx - w / 2, bottom - h, cx + w / 2, bottom),
            "bottom": bottom, "colour": _colour(rng, name), "far": far}


def _colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    if name in ("Car", "Van"):
        if rng.uniform() < 0.4:  # white, grey, black cars
            g = rng.choice([30.0, 120.0, 230.0]) + rng.normal(0, 10)
            return (int(np.clip(g, 0, 255)),) * 3
        return tuple(int(v) for v in rng.uniform(40, 230, size=3))
    return tuple(int(v) for v in rng.uniform(20, 200, size=3))


def _paint(draw: ImageDraw.ImageDraw, own: ImageDraw.ImageDraw, obj: dict[str, Any], k: int,
           rng: np.random.Generator) -> int:
    """Draw an object into the image and, with id ``k``, into the owner map; its pixel count."""
    x0, y0, x1, y1 = obj["box"]
    w, h = x1 - x0, y1 - y0
    parts: list[tuple[str, list[float], tuple[int, int, int]]] = []
    colour = obj["colour"]
    dark = (25, 25, 28)
    if obj["type"] in ("Car", "Van"):
        cabin = 0.45 if obj["type"] == "Car" else 0.15
        parts.append(("rect", [x0, y0 + h * 0.35, x1, y1 - h * 0.12], colour))
        parts.append(("poly", [x0 + w * cabin * 0.4, y0 + h * 0.36, x0 + w * (cabin * 0.6),
                               y0, x1 - w * cabin * 0.6, y0, x1 - w * cabin * 0.4,
                               y0 + h * 0.36], colour))
        parts.append(("rect", [x0 + w * cabin * 0.6 + w * 0.04, y0 + h * 0.07,
                               x1 - w * cabin * 0.6 - w * 0.04, y0 + h * 0.32], (60, 80, 100)))
        r = h * 0.17
        for cx in (x0 + w * 0.2, x1 - w * 0.2):
            parts.append(("ellipse", [cx - r, y1 - 2 * r, cx + r, y1], dark))
    elif obj["type"] == "Pedestrian":
        skin = (int(rng.uniform(120, 230)), int(rng.uniform(90, 190)), int(rng.uniform(70, 160)))
        head = h * 0.09
        cx = (x0 + x1) / 2
        parts.append(("ellipse", [cx - head, y0, cx + head, y0 + 2 * head], skin))
        parts.append(("rect", [x0 + w * 0.1, y0 + 2 * head, x1 - w * 0.1, y0 + h * 0.55],
                      colour))
        legs = tuple(int(v * 0.5) for v in colour)
        parts.append(("rect", [x0 + w * 0.2, y0 + h * 0.55, cx - w * 0.03, y1], legs))
        parts.append(("rect", [cx + w * 0.03, y0 + h * 0.55, x1 - w * 0.2, y1], legs))
    else:  # Cyclist
        r = min(h * 0.22, w * 0.25)
        for cx in (x0 + r, x1 - r):
            parts.append(("ring", [cx - r, y1 - 2 * r, cx + r, y1], dark))
        parts.append(("line", [x0 + r, y1 - r, (x0 + x1) / 2, y1 - 2.2 * r, x1 - r, y1 - r],
                      colour))
        rider_x = (x0 + x1) / 2
        head = h * 0.09
        parts.append(("rect", [rider_x - w * 0.12, y0 + 2 * head, rider_x + w * 0.12,
                               y1 - 2.2 * r], colour))
        parts.append(("ellipse", [rider_x - head, y0, rider_x + head, y0 + 2 * head],
                      (200, 160, 130)))
    for shape, xy, fill in parts:
        for target, value in ((draw, fill), (own, k)):
            if shape == "rect":
                target.rectangle(xy, fill=value)
            elif shape == "poly":
                target.polygon(xy, fill=value)
            elif shape == "ellipse":
                target.ellipse(xy, fill=value)
            elif shape == "ring":
                target.ellipse(xy, outline=value, width=max(1, int(h * 0.05)))
            else:
                target.line(xy, fill=value, width=max(1, int(h * 0.05)))
    # Its own pixel count: the same parts drawn alone on a blank map of the box's size.
    return _area(parts, obj["box"], h)


def _area(parts: list, box: tuple[float, ...], h: float) -> int:
    x0, y0, x1, y1 = box
    w_px, h_px = int(math.ceil(x1 - x0)) + 3, int(math.ceil(y1 - y0)) + 3
    alone = Image.new("L", (max(w_px, 1), max(h_px, 1)), 0)
    d = ImageDraw.Draw(alone)
    for shape, xy, _ in parts:
        shifted = [v - (x0 - 1 if i % 2 == 0 else y0 - 1) for i, v in enumerate(xy)]
        if shape == "rect":
            d.rectangle(shifted, fill=1)
        elif shape == "poly":
            d.polygon(shifted, fill=1)
        elif shape == "ellipse":
            d.ellipse(shifted, fill=1)
        elif shape == "ring":
            d.ellipse(shifted, outline=1, width=max(1, int(h * 0.05)))
        else:
            d.line(shifted, fill=1, width=max(1, int(h * 0.05)))
    return int(np.asarray(alone).sum())


def _label(obj: dict[str, Any], visible: int, width: int, height: int,
           rng: np.random.Generator) -> str | None:
    """The object's KITTI label line (a DontCare region when it is too small), or None when it
    cannot be seen."""
    x0, y0, x1, y1 = obj["box"]
    left, top = max(x0, 0.0), max(y0, 0.0)
    right, bottom = min(x1, width - 1.0), min(y1, height - 1.0)
    if right - left < 1 or bottom - top < 1:
        return None
    if obj["far"] or y1 - y0 < MIN_LABELLED:
        return (f"DontCare -1 -1 -10 {left:.2f} {top:.2f} {right:.2f} {bottom:.2f} -1 -1 -1 "
                f"-1000 -1000 -1000 -10")
    shown = visible / max(obj["pixels"], 1)
    inside = (right - left) / (x1 - x0)
    # The share of the object hidden by others, among its pixels inside the image.
    hidden = 1 - min(1.0, shown / max(inside, 1e-6))
    if shown < 0.05:
        return None
    occluded = 0 if hidden < 0.1 else 1 if hidden < 0.5 else 2
    truncated = round(1 - inside, 2)
    dim_h, dim_w, dim_l = (d * rng.uniform(0.9, 1.1) for d in obj["dims"])
    focal = _FOCAL_AT_375 * height / 375
    z = focal * dim_h / (y1 - y0)
    x = ((x0 + x1) / 2 - width / 2) * z / focal
    rotation = rng.uniform(-math.pi, math.pi)
    alpha = (rotation - math.atan2(x, z) + math.pi) % (2 * math.pi) - math.pi
    return (f"{obj['type']} {truncated:.2f} {occluded} {alpha:.2f} {left:.2f} {top:.2f} "
            f"{right:.2f} {bottom:.2f} {dim_h:.2f} {dim_w:.2f} {dim_l:.2f} {x:.2f} "
            f"{_CAMERA_HEIGHT:.2f} {z:.2f} {rotation:.2f}")
