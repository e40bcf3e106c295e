"""COCO datasets: reading and checking the JSON, the model's input transform, augmentation,
batching.

Each image goes through the model's own input transform (its family's), given to the dataset
as an :class:`~prunekit.models.base.InputTransform`, so datasets
know nothing of any family. Targets come out in the neutral form every family accepts
(:class:`~prunekit.models.base.Target`: boxes in original pixels, class indices, and the
image's geometry).

Training augmentation goes through ``torchvision.transforms.v2`` with ``tv_tensors.BoundingBoxes``,
on the transformed image: horizontal flip, a mild random scale and translation, and
brightness/contrast jitter. There is no hue or saturation jitter: in the synthetic dataset (and
in "lemon vs lime") colour *defines* some classes, and changing it would teach the model that
the classes are the same. An augmented image's boxes are mapped back through its geometry, so
the targets stay in (the augmented image's) original pixels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from prunekit.errors import DataError
from prunekit.models.base import InputTransform, Target

PAD_VALUE = 114  # grey fill where augmentation uncovers the canvas
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
        _check_id(img["id"], "image id", path)
        if not isinstance(img["file_name"], str):
            raise DataError(f"{path}: image {img['id']}'s file_name {img['file_name']!r} is not "
                            f"text; give the image's path relative to the image root")
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DataError(f"{path}: every category needs an 'id' and a 'name'")
        _check_id(cat["id"], "category id", path)
        if not isinstance(cat["name"], str):
            raise DataError(f"{path}: category {cat['id']}'s name {cat['name']!r} is not text; "
                            f"give every category a name")
    for number, ann in enumerate(data["annotations"], start=1):
        _check_annotation(ann, number, path)
    return data


def _check_id(value: Any, what: str, path: Path) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not -2**63 <= value < 2**63:
        raise DataError(f"{path}: {what} {value!r} is not an integer; prunekit needs COCO's "
                        f"integer ids (64-bit)")


def _number(value: Any) -> bool:
    """A finite JSON number (not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return np.isfinite(float(value))
    except OverflowError:  # an integer beyond any float
        return False


def _check_annotation(ann: Any, number: int, path: Path) -> None:
    """An annotation's fields that training and evaluation use, checked for type."""
    if not isinstance(ann, dict):
        raise DataError(f"{path}: annotation {number} is {type(ann).__name__}, not an object "
                        f"with 'image_id', 'category_id' and 'bbox'")
    name = f"{path}: annotation {ann.get('id', number)!r}"
    for key in ("image_id", "category_id"):
        if key not in ann:
            raise DataError(f"{name} has no '{key}'; every annotation needs 'image_id', "
                            f"'category_id' and 'bbox'")
        _check_id(ann[key], key.replace("_", " "), path)
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
        raise DataError(f"{name} has bbox {bbox!r}; expected [x, y, w, h]: four finite "
                        f"numbers")
    if bbox[2] < 0 or bbox[3] < 0:
        raise DataError(f"{name} has bbox {bbox!r} with a negative width or height; boxes are "
                        f"[x, y, w, h] with w and h at least 0")
    if "area" in ann and not _number(ann["area"]):
        raise DataError(f"{name} has area {ann['area']!r}; expected a finite number (or no "
                        f"'area': it defaults to w·h)")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise DataError(f"{name} has iscrowd {ann['iscrowd']!r}; expected 0 or 1")
    if not isinstance(ann.get("difficulty", ""), str):
        raise DataError(f"{name} has difficulty {ann['difficulty']!r}; expected easy, moderate, "
                        f"hard or none")


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


# ------------------------------------------------------------------------------------ datasets


class CocoDetection(Dataset):
    """Images in the model's input form and their targets, from a COCO instances JSON.

    Each item is ``(image, target, record)``: a 3×H×W uint8 tensor at the model's input size,
    a :class:`~prunekit.models.base.Target`, and a dict with ``image_id``, ``file_name``,
    ``size`` (original width, height), ``geometry`` and, with ``originals``, ``original`` (the
    uint8 image as read). Crowd annotations are left out of the targets.
    """

    def __init__(self, json_path: str | Path, transform: InputTransform, *,
                 images: str | Path | None = None, classes: list[str] | None = None,
                 augment: bool = False, cache: bool = False, originals: bool = False) -> None:
        self.source = str(json_path)
        self.originals = originals
        data = read_json(json_path)
        self.root = Path(images) if images is not None else Path(json_path).resolve().parent
        self.transform = transform
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
        self._augment = _train_transform() if augment else None
        # Decoded images are kept as they are first read (per process: each DataLoader worker
        # fills its own), so a long run reads every image once and a short one only what it
        # uses.
        self._cache: list[np.ndarray | None] | None = [None] * len(self.paths) if cache else None

    def __len__(self) -> int:
        return len(self.images)

    def _array(self, i: int) -> np.ndarray:
        if self._cache is None:
            return load_image(self.paths[i])
        if self._cache[i] is None:
            self._cache[i] = load_image(self.paths[i])
        return self._cache[i]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, Target, dict[str, Any]]:
        """Item ``i``, or ``(i, seed)`` to make its augmentation depend on ``seed`` alone (so
        training replays exactly, whatever the workers and wherever it resumed)."""
        from torchvision import tv_tensors

        i, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            torch.manual_seed(seed)
        original = torch.from_numpy(np.ascontiguousarray(self._array(i))).permute(2, 0, 1)
        h, w = original.shape[-2:]
        geometry = self.transform.geometry(w, h)
        t = self.targets[i]
        boxes = geometry.to_input(torch.from_numpy(t[:, :4]))
        image = self.transform.image(original)
        labels = torch.from_numpy(t[:, 4]).long()
        if self._augment is not None:
            out = self._augment({"image": tv_tensors.Image(image),
                                 "boxes": tv_tensors.BoundingBoxes(
                                     boxes, format="XYXY", canvas_size=self.transform.size),
                                 "labels": labels})
            image, boxes, labels = out["image"], out["boxes"].as_subclass(Tensor), out["labels"]
        target = Target(geometry.to_original(boxes.float()), labels, geometry)
        record = {"image_id": self.images[i]["id"], "file_name": self.images[i]["file_name"],
                  "size": (w, h), "geometry": geometry}
        if self.originals:
            record["original"] = original
        return image.as_subclass(Tensor), target, record


class ImageFolder(Dataset):
    """Images from a plain folder (no annotations), in the model's input form; ids are 1, 2,
    ... in sorted file-name order. Items are those of :class:`CocoDetection`, with empty
    targets."""

    def __init__(self, folder: str | Path, transform: InputTransform, *,
                 originals: bool = False) -> None:
        self.root = Path(folder)
        self.originals = originals
        if not self.root.is_dir():
            raise DataError(f"--images {folder} is not a folder of images")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.transform = transform
        self.images = [{"id": i + 1, "file_name": str(p.relative_to(self.root))}
                       for i, p in enumerate(self.paths)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Target, dict[str, Any]]:
        original = torch.from_numpy(np.ascontiguousarray(load_image(self.paths[i]))) \
            .permute(2, 0, 1)
        h, w = original.shape[-2:]
        geometry = self.transform.geometry(w, h)
        target = Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), geometry)
        record = {"image_id": self.images[i]["id"], "file_name": self.images[i]["file_name"],
                  "size": (w, h), "geometry": geometry}
        if self.originals:
            record["original"] = original
        return self.transform.image(original), target, record


def _train_transform():
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


def collate(batch: list[tuple[Tensor, Target, dict[str, Any]]]) \
        -> tuple[Tensor, list[Target], list[dict]]:
    """Stack images as floats in [0, 1]; targets and per-image records as lists."""
    images = torch.stack([b[0] for b in batch]).float().div_(255)
    return images, [b[1] for b in batch], [b[2] for b in batch]


class EpochBatches(Sampler):
    """Batches of (index, augmentation seed) for steps ``start``.. ``stop``; each epoch is a
    permutation seeded by (seed, epoch), so a run's batches are a function of the seed and the
    step alone (it replays exactly, and resumes anywhere).

    With ``world`` processes training together, ``batch`` is the global batch and process
    ``rank`` takes its contiguous share of it: together they see exactly the batches one process
    would, with no padding duplicates (every epoch uses whole batches only).
    """

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, *, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.batch, self.seed, self.start, self.stop = n, batch, seed, start, stop
        self.per_epoch = n // batch
        self.share = slice(rank * batch // world, (rank + 1) * batch // world)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, None
        for step in range(self.start, self.stop):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(self.seed * 7919 + e)
                order, epoch = torch.randperm(self.n, generator=g).tolist(), e
            chunk = order[k * self.batch:(k + 1) * self.batch]
            yield [(i, (self.seed * 1_000_003 + step * 4099 + j) % 2**62)
                   for j, i in enumerate(chunk)][self.share]


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
