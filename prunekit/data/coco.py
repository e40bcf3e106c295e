"""COCO datasets: reading and checking the JSON, letterboxing, augmentation, batching.

Images are letterboxed as the SPEC says: padded to a square (centred, grey 114/255), then resized
to the model's input size. A letterbox is fully described by ``scale`` (input pixels per original
pixel) and the padding ``(pad_x, pad_y)`` in input pixels, so a box maps back to original pixels
as ``(x - pad_x) / scale``.

Training augmentation goes through ``torchvision.transforms.v2`` with ``tv_tensors.BoundingBoxes``:
horizontal flip, a mild random scale and translation, and brightness/contrast jitter. There is no
hue or saturation jitter: in the synthetic dataset (and in "lemon vs lime") colour *defines* some
classes, and changing it would teach the model that the classes are the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from prunekit.errors import DataError

PAD_VALUE = 114
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------- the JSON


def read_json(path: str | Path) -> dict[str, Any]:
    """A COCO instances JSON, checked for the keys prunekit relies on."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; give the COCO JSON file inside it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); expected a COCO "
                        f"instances file") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "categories")):
        raise DataError(f"{path} is not a COCO instances file: it needs 'images', "
                        f"'annotations' and 'categories' lists")
    data.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list")
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DataError(f"{path}: every image needs an 'id' and a 'file_name'")
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DataError(f"{path}: every category needs an 'id' and a 'name'")
    return data


def read_categories(path: str | Path) -> list[dict[str, Any]]:
    """The categories of a COCO JSON in category-id order."""
    data = read_json(path)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if not cats:
        raise DataError(f"{path} has no categories; a detection dataset needs at least one")
    return cats


def class_map(categories: list[dict[str, Any]], classes: list[str] | None,
              source: str) -> dict[int, int]:
    """COCO category id → model class index, matching by name when the model names its classes.
    """
    cats = sorted(categories, key=lambda c: c["id"])
    if classes is None:
        return {c["id"]: i for i, c in enumerate(cats)}
    index = {name: i for i, name in enumerate(classes)}
    missing = [c["name"] for c in cats if c["name"] not in index]
    if missing:
        raise DataError(f"{source}: categories {missing[:3]} are not among the model's classes "
                        f"({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}); use "
                        f"the dataset the model was built for, or `prunekit init --dataset`")
    return {c["id"]: index[c["name"]] for c in cats}


def resolve_image(root: Path, file_name: str, source: str) -> Path:
    """The image path under ``root``; a ``file_name`` that escapes the root is rejected."""
    path = (root / file_name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"{source}: file_name {file_name!r} escapes the image root {root}; "
                        f"image paths must stay inside it")
    return path


def load_image(path: Path) -> np.ndarray:
    """An RGB image as an H×W×3 uint8 array."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; check the dataset's file_name entries or "
                        f"--images") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path} cannot be read ({e}); replace or remove it") from None


# ------------------------------------------------------------------------------- letterboxing


@dataclass(frozen=True)
class Letterbox:
    """How an original image maps into the model's square input."""

    scale: float
    pad_x: float
    pad_y: float

    @classmethod
    def fit(cls, width: int, height: int, size: int) -> Letterbox:
        side = max(width, height)
        scale = size / side
        return cls(scale, (side - width) // 2 * scale, (side - height) // 2 * scale)

    def to_input(self, boxes_xyxy: Tensor) -> Tensor:
        """Original pixels → input pixels."""
        offset = boxes_xyxy.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        return boxes_xyxy * self.scale + offset

    def to_original(self, boxes_xyxy: Tensor) -> Tensor:
        """Input pixels → original pixels."""
        offset = boxes_xyxy.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        return (boxes_xyxy - offset) / self.scale


def letterbox(image: Tensor, size: int, boxes=None):
    """Pad an image (C×H×W uint8) to a centred square with grey, then resize it to ``size``.

    Args:
        image: the original image.
        size: the model's input size.
        boxes: optional ``tv_tensors.BoundingBoxes`` that follow the image.

    Returns:
        The letterboxed image (and boxes, when given) and its :class:`Letterbox`.
    """
    from torchvision.transforms.v2 import functional as TF

    h, w = image.shape[-2:]
    lb = Letterbox.fit(w, h, size)
    side = max(w, h)
    left, top = (side - w) // 2, (side - h) // 2
    padding = [left, top, side - w - left, side - h - top]
    items = (image, boxes) if boxes is not None else (image,)
    out = []
    for item in items:
        if any(padding):
            item = TF.pad(item, padding, fill=PAD_VALUE)
        if side != size:
            item = TF.resize(item, [size, size], antialias=True)
        out.append(item)
    return (*out, lb) if boxes is not None else (out[0], lb)


# ------------------------------------------------------------------------------------ datasets


class CocoDetection(Dataset):
    """Letterboxed images and their boxes from a COCO instances JSON.

    Each item is ``(image, target)``: a 3×S×S uint8 tensor and a dict with ``boxes`` (K×4
    xyxy, input pixels, float32), ``labels`` (K, model class indices), ``image_id``,
    ``file_name``, ``size`` (original width, height) and ``letterbox``. Crowd annotations are
    left out of training targets.
    """

    def __init__(self, json_path: str | Path, img_size: int, *, images: str | Path | None = None,
                 classes: list[str] | None = None, augment: bool = False,
                 cache: bool = False, originals: bool = False) -> None:
        self.source = str(json_path)
        self.originals = originals
        data = read_json(json_path)
        self.root = Path(images) if images is not None else Path(json_path).resolve().parent
        self.img_size = img_size
        self.categories = sorted(data["categories"], key=lambda c: c["id"])
        self.class_of = class_map(self.categories, classes, self.source)
        self.images = sorted(data["images"], key=lambda im: im["id"])
        if not self.images:
            raise DataError(f"{self.source} lists no images; a dataset needs at least one")
        self.paths = [resolve_image(self.root, im["file_name"], self.source)
                      for im in self.images]
        per_image: dict[Any, list] = {im["id"]: [] for im in self.images}
        for ann in data["annotations"]:
            if ann.get("iscrowd", 0) or ann.get("image_id") not in per_image:
                continue
            if ann.get("category_id") not in self.class_of:
                raise DataError(f"{self.source}: annotation {ann.get('id')} has category "
                                f"{ann.get('category_id')}, which is not in 'categories'")
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w > 0 and h > 0:
                per_image[ann["image_id"]].append((x, y, x + w, y + h,
                                                   self.class_of[ann["category_id"]]))
        self.targets = [np.array(per_image[im["id"]], dtype=np.float32).reshape(-1, 5)
                        for im in self.images]
        self.augment = augment
        self._transform = _train_transform(img_size) if augment else None
        # Decoded images are kept as they are first read (per process: each DataLoader worker
        # fills its own), so a long run decodes every image once and a short one only what it
        # uses.
        self._cache: list[np.ndarray | None] | None = [None] * len(self.paths) if cache else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        """Item ``i``, or ``(i, seed)`` to make its augmentation depend on ``seed`` alone (so
        training replays exactly, whatever the workers and wherever it resumed)."""
        from torchvision import tv_tensors

        i, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            torch.manual_seed(seed)
        if self._cache is None:
            array = load_image(self.paths[i])
        else:
            if self._cache[i] is None:
                self._cache[i] = load_image(self.paths[i])
            array = self._cache[i]
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        original = image if self.originals else None
        h, w = image.shape[-2:]
        t = self.targets[i]
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(t[:, :4]), format="XYXY",
                                         canvas_size=(h, w))
        image, boxes, lb = letterbox(image, self.img_size, boxes)
        labels = torch.from_numpy(t[:, 4]).long()
        if self._transform is not None:
            out = self._transform({"image": tv_tensors.Image(image), "boxes": boxes,
                                   "labels": labels})
            image, boxes, labels = out["image"], out["boxes"], out["labels"]
        record = {"boxes": boxes.as_subclass(Tensor).float(), "labels": labels,
                  "image_id": self.images[i]["id"], "file_name": self.images[i]["file_name"],
                  "size": (w, h), "letterbox": lb}
        if original is not None:
            record["original"] = original
        return image.as_subclass(Tensor), record


class ImageFolder(Dataset):
    """Letterboxed images from a plain folder (no annotations); ids are 1, 2, ... in sorted
    file-name order."""

    def __init__(self, folder: str | Path, img_size: int, *, originals: bool = False) -> None:
        self.root = Path(folder)
        self.originals = originals
        if not self.root.is_dir():
            raise DataError(f"--images {folder} is not a folder of images")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.img_size = img_size
        self.images = [{"id": i + 1, "file_name": str(p.relative_to(self.root))}
                       for i, p in enumerate(self.paths)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        image = torch.from_numpy(np.ascontiguousarray(load_image(self.paths[i]))).permute(2, 0, 1)
        h, w = image.shape[-2:]
        original = image if self.originals else None
        image, lb = letterbox(image, self.img_size)
        record = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                  "image_id": self.images[i]["id"], "file_name": self.images[i]["file_name"],
                  "size": (w, h), "letterbox": lb}
        if original is not None:
            record["original"] = original
        return image, record


def _train_transform(size: int):
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomHorizontalFlip(0.5),
        v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.75, 1.25),
                        fill={tv_tensors.Image: PAD_VALUE, "others": 0}),
        v2.ColorJitter(brightness=0.25, contrast=0.25),  # never hue: colour defines classes
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2, labels_getter=lambda s: s["labels"]),
    ])


def collate(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, Tensor, list[dict]]:
    """Stack images as floats in [0, 1]; targets as one M×6 tensor of (batch index, class,
    x1, y1, x2, y2) in input pixels; the per-image records alongside."""
    images = torch.stack([b[0] for b in batch]).float().div_(255)
    rows = [torch.cat((torch.full((len(t["labels"]), 1), float(i)),
                       t["labels"].float().unsqueeze(1), t["boxes"]), 1)
            for i, (_, t) in enumerate(batch)]
    targets = torch.cat(rows) if rows else torch.zeros(0, 6)
    return images, targets, [b[1] for b in batch]


def loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, workers: int = 0,
           seed: int = 0, drop_last: bool = False, batch_sampler=None) -> DataLoader:
    """A DataLoader with prunekit's collate and seeded shuffling (or a batch sampler)."""
    if batch_sampler is not None:
        batching: dict[str, Any] = {"batch_sampler": batch_sampler}
    else:
        batching = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last,
                    "generator": torch.Generator().manual_seed(seed)}
    return DataLoader(dataset, num_workers=workers, collate_fn=collate,
                      worker_init_fn=_seed_worker, **batching,
                      multiprocessing_context="fork" if workers and os.name == "posix" else None)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)
    torch.set_num_threads(1)
