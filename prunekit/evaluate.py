"""COCO box evaluation of a detections CSV with pycocotools, and the metrics it reports.

The numbers are pycocotools' own (to 1e-12 with the faster-coco-eval backend, below): the
CSV's rows go to ``COCO.loadRes`` and ``COCOeval(gt, dt, "bbox")`` with its default parameters,
and the summary keys are ``COCOeval.stats`` in order. Around pycocotools this module adds only
what it gets wrong or leaves unsaid, the same under either backend:

* **No detections** scores 0, not a crash (``loadRes([])`` raises): the evaluation runs on an
  empty result set, which is what pycocotools would compute if it accepted one.
* **Unknown ids are an error.** pycocotools silently drops a detection whose category id is
  not in the ground truth (and asserts on an unknown image id); a model evaluated against the
  wrong dataset must not quietly score 0.
* **-1 becomes null.** Where pycocotools reports -1 (no ground truth of that size, e.g.
  ``map_small`` on a dataset without small objects) the metric is ``None`` (JSON ``null``, an
  empty CSV cell), so that a sentinel can never be averaged into a table of results.
* **Per-class AP** is the mean of ``precision[:, :, k, area=all, maxDets=100]`` over entries
  > -1, as pycocotools computes ``map`` for all classes at once. A category without ground truth
  has no AP at all (pycocotools leaves it out of ``map``), so it is left out of ``per_class``
  too; the mean of ``per_class`` is then ``map``. ``per_class_ap50`` does the same at IoU 0.5.
* **Ground truth is not modified**, and two gaps pycocotools would crash on are filled in a
  copy: a missing ``iscrowd`` is 0 and a missing ``area`` is the box's ``w * h``. Annotation ids
  are renumbered from 1 in the copy, because pycocotools takes a match with annotation id 0 for
  no match, and collapses duplicate ids; neither changes the result for well-formed files.
* **KITTI difficulty** (``difficulty=``): ground truth converted by ``data kitti`` carries each
  object's KITTI level (easy, moderate, hard, or none). At a level, the objects of that level and
  the easier ones count and the harder ones (and "none") become crowd regions, which pycocotools
  ignores: missing them costs nothing and a detection on them is neither a true nor a false
  positive — KITTI's own rule for the objects a level leaves out. The AP itself stays COCO's
  (101 recall points, the usual IoU thresholds), not KITTI's 40-point AP at IoU 0.7 for cars.

**Backends** (``backend=``). ``pycocotools`` is the reference. ``faster-coco-eval`` is a C++
reimplementation of the same ``COCO`` / ``COCOeval`` API, several times faster on a validation
set; it gets the same input and goes through the same steps, silenced (stdout carries data). Its
numbers agree with pycocotools' to 1e-12 but not always to the last bit: pycocotools computes
precision as ``tp / (tp + fp + np.spacing(1))``, faster-coco-eval as ``tp / (tp + fp)``, so at a
recall level that only a lone first true positive reaches (the next detection being a false
one) pycocotools reports ``1 - 2**-52`` and faster-coco-eval 1, and a mean over such entries can
differ in its last bit. ``auto`` (the default) uses faster-coco-eval when it imports and passes a
self-check, else pycocotools; asked for by name, a backend runs without the check. The
self-check runs once per process (about 20 ms): both libraries score a fixed seeded case made to
tell evaluators apart (crowd regions, all three area ranges, a category without ground truth,
near-duplicate detections, tied scores, more than ten detections on an image), and faster-coco-
eval passes only if its precision array equals pycocotools' bit for bit except for that one
``1 - 2**-52`` against 1, its recall and score arrays are equal, and its twelve stats are within
1e-12. The backend that ran is the ``backend`` entry of the metrics (the JSON); the CSV row
leaves it out, so that its columns are the same whichever backend made it.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import gc
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import pandas as pd

from prunekit.data.coco import read_json
from prunekit.detections import check_frame, read_detections
from prunekit.errors import DataError, PrunekitError

#: KITTI's evaluation levels, easiest first; each includes the ones before it.
DIFFICULTIES = ("easy", "moderate", "hard")
#: The summary metrics, in the order of pycocotools' ``COCOeval.stats``.
METRICS = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
           "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")
#: The ``backend`` choices: ``auto``, then the COCO evaluation libraries (module docstring).
BACKENDS = ("auto", "pycocotools", "faster-coco-eval")
_PER_CLASS_PREFIX = {"per_class": "ap.", "per_class_ap50": "ap50."}
#: pycocotools' precision for one true positive alone: 1 / (1 + np.spacing(1)) = 1 - 2**-52.
_ONE_TP = 1 / (1 + np.spacing(1))


def evaluate(detections: str | Path | IO[str] | pd.DataFrame | None,
             gt: str | Path | dict[str, Any], *,
             per_class: bool = True, difficulty: str | None = None,
             backend: str = "auto") -> dict[str, Any]:
    """Score detections against COCO ground truth with COCOeval (bbox, default parameters).

    Args:
        detections: A detections CSV (path, text stream, or ``None`` / ``"-"`` for stdin) or a
            frame with its columns, as :func:`prunekit.detections.read_detections` returns.
        gt: A COCO instances JSON, as a path or already loaded (it is not modified).
        per_class: Also report AP and AP50 per category name.
        difficulty: Score at a KITTI level (``easy``, ``moderate``, ``hard``): the ground
            truth's harder objects are ignored (module docstring). The ground truth must carry
            ``difficulty`` on every annotation (``data kitti`` writes it).
        backend: ``pycocotools``, ``faster-coco-eval``, or ``auto``: faster-coco-eval where it
            is installed and passes its self-check, else pycocotools (module docstring).

    Returns:
        ``map, map50, map75, map_small, map_medium, map_large, ar1, ar10, ar100, ar_small,
        ar_medium, ar_large`` (floats, ``None`` where pycocotools says -1), ``images`` (ground
        truth images evaluated), ``detections`` (rows read), ``backend`` (the library that
        computed them) and, with ``per_class``, ``per_class`` and ``per_class_ap50`` (category
        name → AP, categories with ground truth only, in category-id order).

    Raises:
        DataError: An unreadable file, or a detection whose image or category id is not in the
            ground truth.
        PrunekitError: An unknown backend, or faster-coco-eval asked for and not installed.
    """
    name = resolve_backend(backend)
    library = _library(name)
    if isinstance(detections, pd.DataFrame):
        frame = check_frame(detections, str(detections.attrs.get("source", "detections")))
    else:
        frame = read_detections(detections)
    dataset, gt_name = _ground_truth(gt)
    if difficulty is not None:
        _ignore_harder(dataset, gt_name, difficulty)
    _check_ids(frame, dataset, frame.attrs.get("source", "detections"), gt_name)

    coco_gt, coco_eval = _run(library, dataset, frame)
    metrics: dict[str, Any] = {key: _number(v) for key, v in zip(METRICS, coco_eval.stats,
                                                                  strict=True)}
    metrics["images"] = len(coco_eval.params.imgIds)
    metrics["detections"] = len(frame)
    metrics["backend"] = name
    if per_class:
        metrics["per_class"], metrics["per_class_ap50"] = _per_class(coco_eval, coco_gt)
    return metrics


def resolve_backend(backend: str = "auto") -> str:
    """The library ``backend`` stands for: ``auto`` resolved (module docstring), or itself.

    Raises:
        PrunekitError: ``backend`` is not one of :data:`BACKENDS`.
    """
    if backend not in BACKENDS:
        raise PrunekitError(f"backend {backend!r} is not a COCO evaluation backend; use one of "
                            f"{', '.join(BACKENDS)}")
    if backend == "auto":
        return "faster-coco-eval" if _faster_passes_self_check() else "pycocotools"
    return backend


def format_csv_row(metrics: dict[str, Any]) -> str:
    """A header line and one row of ``metrics``, for appending runs into one table.

    Per-class dictionaries become columns ``ap.<name>`` and ``ap50.<name>``; ``None`` becomes an
    empty cell; floats are written in full (``repr``) so the row holds pycocotools' numbers.
    ``backend`` is left out: rows made by either backend have the same columns.
    """
    row: dict[str, Any] = {}
    for key, value in metrics.items():
        if key == "backend":
            continue
        if isinstance(value, dict):
            prefix = _PER_CLASS_PREFIX.get(key, f"{key}.")
            row.update({f"{prefix}{name}": v for name, v in value.items()})
        else:
            row[key] = value
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(row)
    writer.writerow("" if v is None else repr(v) if isinstance(v, float) else v
                    for v in row.values())
    return out.getvalue()


def _ground_truth(gt: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A private copy of the ground truth, made safe for pycocotools (module docstring)."""
    if isinstance(gt, dict):
        name = "the ground truth"
        missing = [k for k in ("images", "categories") if not isinstance(gt.get(k), list)]
        if missing:
            raise DataError(f"{name} is not a COCO instances dict: it has no '{missing[0]}' "
                            f"list")
        dataset = copy.deepcopy(gt)
        dataset.setdefault("annotations", [])
    else:
        name = str(gt)
        dataset = read_json(gt)
    for kind in ("images", "categories"):
        for entry in dataset[kind]:
            if not isinstance(entry.get("id"), int | np.integer):
                raise DataError(f"{name}: {kind[:-1]} id {entry.get('id')!r} is not an integer; "
                                f"prunekit needs COCO's integer ids (the detections CSV holds "
                                f"integers)")
    for number, ann in enumerate(dataset["annotations"], start=1):
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list | tuple) and len(bbox) == 4):
            raise DataError(f"{name}: annotation {ann.get('id', number)!r} has no 'bbox' "
                            f"[x, y, w, h]; box evaluation needs one on every annotation")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
        ann["id"] = number
    return dataset, name


def _ignore_harder(dataset: dict[str, Any], name: str, level: str) -> None:
    """Mark the annotations harder than ``level`` as crowd regions (pycocotools ignores them)."""
    if level not in DIFFICULTIES:
        raise DataError(f"difficulty {level!r} is not a KITTI level; use one of "
                        f"{', '.join(DIFFICULTIES)}")
    counted = set(DIFFICULTIES[:DIFFICULTIES.index(level) + 1])
    for ann in dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        if "difficulty" not in ann:
            raise DataError(f"{name}: annotation {ann['id']} has no 'difficulty'; scoring by "
                            f"KITTI difficulty needs ground truth converted by `prunekit data "
                            f"kitti`")
        if ann["difficulty"] not in counted:
            ann["iscrowd"] = 1


def _check_ids(frame: pd.DataFrame, dataset: dict[str, Any], det_name: str,
               gt_name: str) -> None:
    images = {img["id"] for img in dataset["images"]}
    bad = ~frame["image_id"].isin(images)
    if bad.any():
        first = int(frame["image_id"][bad].iloc[0])
        raise DataError(f"{det_name}: image_id {first} is not an image in {gt_name}"
                        f"{_more(int(bad.sum()))}; evaluate detections against the ground "
                        f"truth of the images they were made on")
    categories = sorted(cat["id"] for cat in dataset["categories"])
    bad = ~frame["category_id"].isin(set(categories))
    if bad.any():
        first = int(frame["category_id"][bad].iloc[0])
        shown = ", ".join(map(str, categories[:10])) + (", ..." if len(categories) > 10 else "")
        raise DataError(f"{det_name}: category_id {first} is not a category in {gt_name}"
                        f"{_more(int(bad.sum()))}; its category ids are {shown or 'none'}: use "
                        f"the dataset's COCO category ids, not the model's class indices")


def _more(rows: int) -> str:
    return f" ({rows - 1} more rows like it)" if rows > 1 else ""


def _results(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows in pycocotools' results format, as plain Python numbers."""
    boxes = frame[["x", "y", "w", "h"]].to_numpy(dtype=np.float64).tolist()
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(frame["image_id"].tolist(), frame["category_id"].tolist(),
                                  boxes, frame["score"].tolist(), strict=True)]


class _Library(NamedTuple):
    """A COCO evaluation library: its ``COCO`` index, empty, and its box ``COCOeval``."""

    coco: Callable[[], Any]
    cocoeval: Callable[[Any, Any], Any]


def _pycocotools() -> _Library:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return _Library(COCO, lambda gt, dt: COCOeval(gt, dt, "bbox"))


def _faster_coco_eval() -> _Library:
    from faster_coco_eval import COCO, COCOeval_faster

    # Its progress goes to logging rather than stdout; silence it all the same.
    def quiet(*args: Any, **kwargs: Any) -> None:
        pass

    return _Library(lambda: COCO(print_function=quiet),
                    lambda gt, dt: COCOeval_faster(gt, dt, "bbox", print_function=quiet))


#: How to import each backend's library (``auto`` aside); the self-check looks them up here too.
_LIBRARIES: dict[str, Callable[[], _Library]] = {"pycocotools": _pycocotools,
                                                 "faster-coco-eval": _faster_coco_eval}


def _library(name: str) -> _Library:
    try:
        return _LIBRARIES[name]()
    except ImportError as e:
        other = "" if name == "pycocotools" else ", or use `--backend pycocotools`"
        raise PrunekitError(f"the {name} backend cannot be imported ({e}); install {name} "
                            f"(`pip install {name}`){other}") from e


def _run(library: _Library, dataset: dict[str, Any], frame: pd.DataFrame) -> tuple[Any, Any]:
    """``COCOeval`` run (evaluate, accumulate, summarize) on ``frame``: (the gt index, it)."""
    # pycocotools prints progress on stdout, which carries only data here.
    with contextlib.redirect_stdout(io.StringIO()), _gc_paused():
        coco_gt = library.coco()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if len(frame):
            coco_dt = coco_gt.loadRes(_results(frame))
        else:  # loadRes([]) raises; score the empty result set pycocotools cannot load
            coco_dt = library.coco()
            coco_dt.dataset = {"images": list(dataset["images"]), "annotations": [],
                               "categories": copy.deepcopy(dataset["categories"])}
            coco_dt.createIndex()
        coco_eval = library.cocoeval(coco_gt, coco_dt)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_gt, coco_eval


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: both libraries build a few small dicts and lists
    per detection and object, none in a cycle, and each collection they trigger walks every
    object of the process (on 18,000 detections, a tenth of a second: a tenth of pycocotools'
    time and nearly half of faster-coco-eval's; more beside torch)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@functools.cache
def _faster_passes_self_check() -> bool:
    """Whether faster-coco-eval imports and gives pycocotools' numbers (module docstring)."""
    try:
        faster = _LIBRARIES["faster-coco-eval"]()
    except ImportError:
        return False
    dataset, frame = _self_check_case()
    _, reference = _run(_LIBRARIES["pycocotools"](), copy.deepcopy(dataset), frame)
    try:
        _, candidate = _run(faster, copy.deepcopy(dataset), frame)
        return _same_numbers(reference, candidate)
    except Exception:  # any failure, e.g. a changed API, means "not proven": use pycocotools
        return False


def _same_numbers(reference: Any, candidate: Any) -> bool:
    """``candidate`` COCOeval's results are ``reference``'s, up to pycocotools' ε (docstring)."""
    ref, got = reference.eval, candidate.eval
    precision, other = ref["precision"], np.asarray(got["precision"])
    if precision.shape != other.shape:
        return False
    same = (precision == other) | ((precision == _ONE_TP) & (other == 1.0))
    stats, other_stats = np.asarray(reference.stats), np.asarray(candidate.stats)
    return bool(same.all()
                and np.array_equal(ref["recall"], np.asarray(got["recall"]))
                and np.array_equal(ref["scores"], np.asarray(got["scores"]))
                and stats.shape == other_stats.shape
                and np.allclose(stats, other_stats, rtol=0, atol=1e-12))


def _self_check_case() -> tuple[dict[str, Any], pd.DataFrame]:
    """A small fixed case that tells COCO evaluators apart: 6 images, 4 categories (one without
    ground truth), objects of all three area ranges, crowd regions, near-duplicate detections,
    detections on crowd regions and of the wrong category, tied scores, and up to 20
    detections on an image (so maxDets 1 and 10 cut)."""
    rng = np.random.default_rng(20240917)
    sizes = ((6, 30), (34, 94), (100, 260))  # side lengths: small, medium and large areas
    anns, rows = [], []
    for image_id in range(1, 7):
        for _ in range(int(rng.integers(3, 9))):
            low, high = sizes[int(rng.integers(3))]
            w, h = rng.uniform(low, high, 2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            cat = int(rng.choice([1, 2, 5]))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h * rng.uniform(0.5, 1.0),
                         "iscrowd": int(rng.random() < 0.2)})
            for _ in range(int(rng.integers(0, 5))):  # near-duplicates, some of another class
                jx, jy, jw, jh = rng.uniform(-0.25, 0.25, 4)
                rows.append((image_id, cat if rng.random() < 0.8 else 9,
                             x + jx * w, y + jy * h, w * (1 + jw), h * (1 + jh)))
        for _ in range(int(rng.integers(2, 9))):  # false positives anywhere
            w, h = rng.uniform(6, 200, 2)
            rows.append((image_id, int(rng.choice([1, 2, 5, 9])), *rng.uniform(0, 400, 2), w, h))
    frame = pd.DataFrame(rows, columns=["image_id", "category_id", "x", "y", "w", "h"])
    frame["score"] = rng.integers(1, 8, len(frame)) / 8  # few distinct values: many ties
    dataset = {"images": [{"id": i, "width": 640, "height": 480} for i in range(1, 7)],
               "annotations": anns,
               "categories": [{"id": c, "name": str(c)} for c in (1, 2, 5, 9)]}
    return dataset, frame


def _per_class(coco_eval: Any, coco_gt: Any) -> tuple[dict[str, float], dict[str, float]]:
    params = coco_eval.params
    # precision is [IoU thresholds, recall thresholds, categories, area ranges, max detections]
    precision = coco_eval.eval["precision"][:, :, :, params.areaRngLbl.index("all"),
                                            params.maxDets.index(100)]
    iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    cats = coco_gt.loadCats(params.catIds)
    names = [str(c.get("name", c["id"])) for c in cats]
    ap: dict[str, float] = {}
    ap50: dict[str, float] = {}
    for k, cat in enumerate(cats):
        values = precision[:, :, k]
        if not (values > -1).any():
            continue  # no ground truth of this category: pycocotools leaves it out of map
        # Two categories sharing a name would overwrite each other; the id tells them apart.
        name = names[k] if names.count(names[k]) == 1 else f"{names[k]}#{cat['id']}"
        ap[name] = float(np.mean(values[values > -1]))
        at50 = values[iou50]
        ap50[name] = float(np.mean(at50[at50 > -1]))
    return ap, ap50


def _number(value: float) -> float | None:
    return None if value == -1 else float(value)
