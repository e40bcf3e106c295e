"""`evaluate`: pycocotools' numbers through the detections CSV, and the command around it."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from prunekit.cli import app
from prunekit.detections import DetectionWriter, read_detections
from prunekit.errors import DataError, PrunekitError
from prunekit.evaluate import METRICS, evaluate, format_csv_row
from tests.conftest import fixture_path

# pycocotools' bbox stats for cocoapi's fake results, at full precision (fixtures/README.md).
PUBLISHED = {
    "map": 0.5045806987249628, "map50": 0.6969727247299577, "map75": 0.5729816669904824,
    "map_small": 0.5856257209410443, "map_medium": 0.5193996948036719,
    "map_large": 0.5013978986347466, "ar1": 0.38681277964578054, "ar10": 0.5936795762842003,
    "ar100": 0.595352982877607, "ar_small": 0.6398109626113442,
    "ar_medium": 0.5664205978994309, "ar_large": 0.5642905982905982,
}


def _pycocotools_stats(gt: dict, results: list[dict], cat_ids: list[int] | None = None
                       ) -> np.ndarray:
    """COCOeval run directly, as its documentation shows: the reference."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        coco_eval = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        if cat_ids is not None:
            coco_eval.params.catIds = cat_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def _to_csv(results: list[dict], names: dict[int, str]) -> str:
    """COCO results (a JSON list) → the detections CSV, one image at a time as `detect` does."""
    by_image = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    out = io.StringIO()
    with DetectionWriter(out) as writer:
        for image_id, rows in by_image.items():
            writer.write(image_id, f"{image_id:012d}.jpg",
                         np.array([r["bbox"] for r in rows], dtype=np.float64),
                         np.array([r["score"] for r in rows], dtype=np.float64),
                         np.array([r["category_id"] for r in rows]), names)
    return out.getvalue()


def _names(gt: dict) -> dict[int, str]:
    return {c["id"]: c["name"] for c in gt["categories"]}


@pytest.fixture(scope="module")
def coco100():
    gt_path = fixture_path("cocoapi", "instances_val2014_100.json")
    results = json.loads(fixture_path("cocoapi",
                                      "instances_val2014_fakebbox100_results.json").read_text())
    return gt_path, results


def test_reproduces_pycocotools_published_stats_through_the_csv(coco100, tmp_path):
    gt_path, results = coco100
    gt = json.loads(gt_path.read_text())
    csv_path = tmp_path / "dets.csv"
    csv_path.write_text(_to_csv(results, _names(gt)))

    # The CSV holds the coordinates exactly, not merely to 1e-9.
    frame = read_detections(csv_path).sort_values(["image_id", "score"], kind="stable")
    boxes = np.array([r["bbox"] for r in results])
    order = np.lexsort(([r["score"] for r in results], [r["image_id"] for r in results]))
    assert np.array_equal(frame[["x", "y", "w", "h"]].to_numpy(), boxes[order])

    metrics = evaluate(csv_path, gt_path, backend="pycocotools")
    for key, value in PUBLISHED.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    assert metrics["images"] == 100 and metrics["detections"] == 734 == len(results)
    assert list(metrics["per_class"]) == list(metrics["per_class_ap50"])
    assert len(metrics["per_class"]) == 70  # 10 of the 80 categories have no ground truth
    assert np.mean(list(metrics["per_class"].values())) == pytest.approx(metrics["map"],
                                                                         abs=1e-12)
    # A category's AP is what pycocotools reports when told to evaluate that category alone.
    for name in ("person", "dog", "toothbrush"):
        (cat_id,) = [c["id"] for c in gt["categories"] if c["name"] == name]
        alone = _pycocotools_stats(gt, results, cat_ids=[cat_id])
        assert metrics["per_class"][name] == pytest.approx(alone[0], abs=1e-12)
        assert metrics["per_class_ap50"][name] == pytest.approx(alone[1], abs=1e-12)
    assert np.array_equal(_pycocotools_stats(gt, results),
                          np.array([metrics[k] for k in METRICS]))


# Scores from a few values too, so that ties (broken by pycocotools' stable sort) happen.
_SCORES = st.one_of(st.sampled_from((0.25, 0.5, 0.75)), st.floats(0.01, 1.0))


@st.composite
def _scenes(draw):
    """Random ground truth (sizes in all three COCO area ranges, some crowd regions) and
    detections, some near a ground-truth box so that matches happen at every IoU."""
    cat_ids = draw(st.lists(st.integers(1, 30), min_size=2, max_size=3, unique=True))
    image_ids = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=4, unique=True))
    coord = st.floats(0, 400, allow_nan=False, width=32)
    size = st.floats(0.5, 160, allow_nan=False, width=32)
    images, anns, results = [], [], []
    for image_id in image_ids:
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640,
                       "height": 480})
        boxes = []
        for _ in range(draw(st.integers(0, 5))):
            box = [draw(coord), draw(coord), draw(size), draw(size)]
            boxes.append(box)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "bbox": box,
                         "category_id": draw(st.sampled_from(cat_ids)),
                         "area": box[2] * box[3] * draw(st.floats(0.3, 1.0)),
                         "iscrowd": int(draw(st.integers(0, 5)) == 0)})
        for _ in range(draw(st.integers(0, 6))):
            if boxes and draw(st.booleans()):
                x, y, w, h = draw(st.sampled_from(boxes))
                jitter = draw(st.lists(st.floats(-0.3, 0.3), min_size=4, max_size=4))
                box = [x + jitter[0] * w, y + jitter[1] * h, w * (1 + jitter[2]),
                       h * (1 + jitter[3])]
            else:
                box = [draw(coord), draw(coord), draw(size), draw(size)]
            results.append({"image_id": image_id, "category_id": draw(st.sampled_from(cat_ids)),
                            "bbox": box, "score": draw(_SCORES)})
    categories = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": categories}, results


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenes())
def test_equals_pycocotools_on_random_scenes(scene):
    gt, results = scene
    assume(results)  # pycocotools itself cannot take an empty result list
    reference = _pycocotools_stats(gt, results)
    gt_before = copy.deepcopy(gt)
    text = _to_csv(results, _names(gt))
    metrics = evaluate(io.StringIO(text), gt)
    assert gt == gt_before  # the caller's ground truth is left alone
    for key, expected in zip(METRICS, reference, strict=True):
        if expected == -1:
            assert metrics[key] is None, key
        else:
            assert metrics[key] == pytest.approx(expected, abs=1e-12), key
    if metrics["map"] is not None:
        assert np.mean(list(metrics["per_class"].values())) == pytest.approx(metrics["map"],
                                                                             abs=1e-12)

    # Another column order, plus a column the reader does not know, gives the same result.
    frame = pd.read_csv(io.StringIO(text), dtype={"file_name": str})
    frame.insert(3, "model", "yolov3")
    shuffled = frame[["h", "score", "model", "category", "x", "image_id", "w", "file_name",
                      "y", "category_id"]].to_csv(index=False)
    assert evaluate(io.StringIO(shuffled), gt) == metrics


def _small_gt() -> dict:
    """Two images, two categories, one medium and one large box, no small ones."""
    return {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 3, "name": "circle"}, {"id": 5, "name": "square"},
                       {"id": 9, "name": "unseen"}],
        "annotations": [
            {"id": 0, "image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 50]},
            {"id": 0, "image_id": 2, "category_id": 5, "bbox": [0, 0, 120, 100],
             "area": 12000.0, "iscrowd": 0},
        ],
    }


def test_small_ground_truth_without_info_area_or_unique_ids():
    # One hit for "circle", an IoU-0.6 box for "square"; no info block, one annotation without
    # area and iscrowd, both with id 0 (which pycocotools would take for "unmatched").
    dets = pd.DataFrame({"image_id": [1, 2], "category_id": [3, 5], "score": [0.9, 0.8],
                         "x": [10.0, 0.0], "y": [10.0, 0.0], "w": [50.0, 72.0],
                         "h": [50.0, 100.0]})
    metrics = evaluate(dets, _small_gt())
    # IoU 0.6 matches at thresholds 0.5, 0.55 and 0.6: 3 of 10. ("unseen" has no ground truth.)
    assert metrics["per_class"] == {"circle": pytest.approx(1), "square": pytest.approx(0.3)}
    assert metrics["per_class_ap50"] == {"circle": pytest.approx(1), "square": pytest.approx(1)}
    assert metrics["map"] == pytest.approx(0.65) and metrics["map50"] == pytest.approx(1)
    assert metrics["map_small"] is None and metrics["ar_small"] is None  # no small objects
    assert metrics["map_medium"] == pytest.approx(1)
    assert metrics["map_large"] == pytest.approx(0.3)
    assert metrics["images"] == 2 and metrics["detections"] == 2
    assert "per_class" not in evaluate(dets, _small_gt(), per_class=False)


def test_no_detections_scores_zero():
    empty = pd.DataFrame(columns=["image_id", "category_id", "score", "x", "y", "w", "h"])
    metrics = evaluate(empty, _small_gt())
    assert all(metrics[k] == 0.0 for k in METRICS if not k.endswith("_small"))
    assert metrics["map_small"] is None
    assert metrics["per_class"] == {"circle": 0.0, "square": 0.0}
    assert metrics["detections"] == 0


@pytest.mark.parametrize(("row", "message"), [
    ("7,x.png,3,circle,0.5,1,2,3,4", "image_id 7 is not an image in"),
    ("2,b.png,4,circle,0.5,1,2,3,4", "category_id 4 is not a category in"),
])
def test_unknown_ids_are_errors_not_silently_dropped(tmp_path, row, message):
    path = tmp_path / "dets.csv"
    path.write_text("image_id,file_name,category_id,category,score,x,y,w,h\n"
                    "1,a.png,3,circle,0.5,1,2,3,4\n" + row + "\n")
    with pytest.raises(DataError, match=message):
        evaluate(path, _small_gt())


def test_ground_truth_with_string_ids_is_refused():
    gt = _small_gt()
    gt["images"][0]["id"] = "a"
    with pytest.raises(DataError, match="image id 'a' is not an integer"):
        evaluate(pd.DataFrame(columns=["image_id", "category_id", "score", "x", "y", "w", "h"]),
                 gt)


def test_csv_row_flattens_per_class_and_blanks_missing_metrics():
    metrics = {"map": 0.5, "map_small": None, "images": 2, "detections": 3,
               "per_class": {"a,b": 0.25, "c": 1.0}, "per_class_ap50": {"a,b": 0.5, "c": 1.0}}
    header, row = csv.reader(io.StringIO(format_csv_row(metrics)))
    assert header == ["map", "map_small", "images", "detections", "ap.a,b", "ap.c", "ap50.a,b",
                      "ap50.c"]
    assert row == ["0.5", "", "2", "3", "0.25", "1.0", "0.5", "1.0"]


# --- the command -------------------------------------------------------------------------------

def _gt_file(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps(_small_gt()))
    return path


def test_cli_prints_only_json(runner, coco100, tmp_path):
    gt_path, results = coco100
    dets = tmp_path / "dets.csv"
    dets.write_text(_to_csv(results, _names(json.loads(gt_path.read_text()))))
    result = runner.invoke(app, ["evaluate", str(dets), "--gt", str(gt_path)])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["map"] == pytest.approx(PUBLISHED["map"], abs=1e-12)
    assert len(metrics["per_class"]) == 70 and metrics["backend"] == "faster-coco-eval"

    # The CSV row holds pycocotools' numbers to the last digit, and no backend column.
    result = runner.invoke(app, ["evaluate", "-", "--gt", str(gt_path), "--format", "csv",
                                 "--backend", "pycocotools"], input=dets.read_text())
    assert result.exit_code == 0, result.stderr
    header, row, *rest = csv.reader(io.StringIO(result.stdout))
    assert not rest and len(header) == len(row) == 14 + 2 * 70
    assert dict(zip(header, row, strict=True))["map50"] == repr(PUBLISHED["map50"])


def test_cli_header_only_scores_zero_and_writes_output_file(runner, tmp_path):
    dets = tmp_path / "dets.csv"
    dets.write_text("image_id,file_name,category_id,category,score,x,y,w,h\n")
    out = tmp_path / "metrics.json"
    result = runner.invoke(app, ["evaluate", str(dets), "--gt", str(_gt_file(tmp_path)),
                                 "--no-per-class", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    metrics = json.loads(out.read_text())
    assert metrics["map"] == 0.0 and metrics["ar100"] == 0.0 and "per_class" not in metrics


@pytest.mark.parametrize(("text", "message"), [
    ("image_id,category_id,score,x,y,w,h\n1,3,0.5,1,2,3,4\n42,3,0.5,1,2,3,4\n",
     "image_id 42 is not an image"),
    ("image_id,category_id,score,x,y,w,h\n1,99,0.5,1,2,3,4\n", "category_id 99 is not a category"),
    ("", "is empty"),
])
def test_cli_bad_input_is_one_error_line_and_exit_1(runner, tmp_path, text, message):
    dets = tmp_path / "dets.csv"
    dets.write_text(text)
    out = tmp_path / "metrics.json"
    result = runner.invoke(app, ["evaluate", str(dets), "--gt", str(_gt_file(tmp_path)),
                                 "-o", str(out)])
    assert result.exit_code == 1
    assert result.stdout == "" and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_cli_needs_ground_truth(runner, tmp_path):
    result = runner.invoke(app, ["evaluate", "dets.csv"])
    assert result.exit_code == 2 and "--gt" in result.stderr


def _kitti_gt() -> dict:
    """One image, one category: an easy, a moderate and a hard car."""
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": bbox, "area": bbox[2] * bbox[3],
             "iscrowd": 0, "difficulty": level}
            for i, (bbox, level) in enumerate([([10, 10, 50, 50], "easy"),
                                               ([100, 10, 40, 30], "moderate"),
                                               ([200, 10, 30, 26], "hard")])]
    return {"images": [{"id": 1, "width": 400, "height": 100, "file_name": "a.png"}],
            "annotations": anns, "categories": [{"id": 1, "name": "Car"}]}


def _dets(*boxes) -> pd.DataFrame:
    rows = [{"image_id": 1, "category_id": 1, "x": b[0], "y": b[1], "w": b[2], "h": b[3],
             "score": 0.9 - 0.1 * i} for i, b in enumerate(boxes)]
    return pd.DataFrame(rows, columns=["image_id", "category_id", "x", "y", "w", "h", "score"])


def test_kitti_difficulty_ignores_the_harder_objects():
    gt = _kitti_gt()
    # Only the easy car is found: all of easy's AP, a part of moderate's and hard's.
    easy_only = _dets([10, 10, 50, 50])
    assert evaluate(easy_only, gt, difficulty="easy")["map50"] == pytest.approx(1.0)
    assert evaluate(easy_only, gt, difficulty="moderate")["map50"] < 0.6
    assert evaluate(easy_only, gt, difficulty="hard")["map50"] < 0.4
    # A detection on the hard car is neither true nor false at the easy level (ignored), and a
    # true positive at the hard one.
    both = _dets([10, 10, 50, 50], [200, 10, 30, 26])
    assert evaluate(both, gt, difficulty="easy")["map50"] == pytest.approx(1.0)
    assert evaluate(both, gt, difficulty="hard")["map50"] == pytest.approx(
        evaluate(both, gt)["map50"])
    assert gt["annotations"][2]["iscrowd"] == 0  # the ground truth given is not modified


def test_kitti_difficulty_needs_converted_ground_truth():
    gt = _kitti_gt()
    with pytest.raises(DataError, match="not a KITTI level"):
        evaluate(_dets([10, 10, 50, 50]), gt, difficulty="medium")
    del gt["annotations"][1]["difficulty"]
    with pytest.raises(DataError, match="converted by `prunekit data kitti`"):
        evaluate(_dets([10, 10, 50, 50]), gt, difficulty="easy")


# --- backends ------------------------------------------------------------------------------------

def _assert_same_metrics(faster: dict, reference: dict) -> None:
    """faster-coco-eval's metrics are pycocotools': every number to 1e-12, nulls alike."""
    assert faster["backend"] == "faster-coco-eval" and reference["backend"] == "pycocotools"
    assert faster.keys() == reference.keys()
    for key in METRICS:
        if reference[key] is None:
            assert faster[key] is None, key
        else:
            assert faster[key] == pytest.approx(reference[key], abs=1e-12), key
    assert (faster["images"], faster["detections"]) == (reference["images"],
                                                        reference["detections"])
    for key in ("per_class", "per_class_ap50"):
        if key in reference:
            assert list(faster[key]) == list(reference[key]), key
            assert faster[key] == pytest.approx(reference[key], abs=1e-12), key


def _both(detections, gt, **kwargs) -> tuple[dict, dict]:
    return (evaluate(detections, gt, backend="faster-coco-eval", **kwargs),
            evaluate(detections, gt, backend="pycocotools", **kwargs))


@pytest.fixture
def fresh_self_check():
    """auto's self-check run again in this test, and again after it."""
    from prunekit.evaluate import _faster_passes_self_check

    _faster_passes_self_check.cache_clear()
    yield
    _faster_passes_self_check.cache_clear()


def test_backends_agree_on_the_published_fixture(coco100, tmp_path):
    gt_path, results = coco100
    dets = tmp_path / "dets.csv"
    dets.write_text(_to_csv(results, _names(json.loads(gt_path.read_text()))))
    faster, reference = _both(dets, gt_path)
    _assert_same_metrics(faster, reference)
    assert len(faster["per_class"]) == 70
    for key, value in PUBLISHED.items():
        assert faster[key] == pytest.approx(value, abs=1e-12), key


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenes())
def test_backends_agree_on_random_scenes(scene):
    gt, results = scene
    frame = read_detections(io.StringIO(_to_csv(results, _names(gt)))) if results else \
        pd.DataFrame(columns=["image_id", "category_id", "score", "x", "y", "w", "h"])
    _assert_same_metrics(*_both(frame, gt))


def test_backends_agree_on_no_detections_unknown_ids_and_kitti_levels():
    empty = pd.DataFrame(columns=["image_id", "category_id", "score", "x", "y", "w", "h"])
    faster, reference = _both(empty, _small_gt())
    _assert_same_metrics(faster, reference)
    assert faster["per_class"] == {"circle": 0.0, "square": 0.0}
    assert faster["map_small"] is None and faster["map"] == 0.0

    bad = pd.DataFrame({"image_id": [1], "category_id": [4], "score": [0.5], "x": [1.0],
                        "y": [2.0], "w": [3.0], "h": [4.0]})
    with pytest.raises(DataError, match="category_id 4 is not a category in"):
        evaluate(bad, _small_gt(), backend="faster-coco-eval")

    gt = _kitti_gt()
    dets = _dets([10, 10, 50, 50], [200, 12, 30, 25], [98, 10, 40, 31], [300, 50, 20, 20])
    for level in (None, "easy", "moderate", "hard"):
        _assert_same_metrics(*_both(dets, gt, difficulty=level))
    assert evaluate(_dets([10, 10, 50, 50], [200, 10, 30, 26]), gt, difficulty="easy",
                    backend="faster-coco-eval")["map50"] == pytest.approx(1.0)
    assert gt == _kitti_gt()  # neither backend touched the caller's ground truth


def test_faster_backend_prints_nothing(capfd):
    evaluate(_dets([10, 10, 50, 50]), _kitti_gt(), backend="faster-coco-eval")
    out, _ = capfd.readouterr()
    assert out == ""


def test_auto_uses_faster_coco_eval_when_its_self_check_passes(fresh_self_check):
    from prunekit.evaluate import resolve_backend

    assert resolve_backend("auto") == "faster-coco-eval"
    assert evaluate(_dets([10, 10, 50, 50]), _kitti_gt())["backend"] == "faster-coco-eval"


def _crowd_counted(gt, dt):
    """A wrong evaluator: crowd regions count as ordinary objects."""
    for ann in gt.dataset["annotations"]:
        ann["iscrowd"] = 0
    return _faster_eval(gt, dt)


def _iou_shifted(gt, dt):
    """A wrong evaluator: IoU thresholds 0.51 to 0.96."""
    coco_eval = _faster_eval(gt, dt)
    coco_eval.params.iouThrs = coco_eval.params.iouThrs + 0.01
    return coco_eval


def _fewer_dets(gt, dt):
    """A wrong evaluator: AR at 5 detections per image where pycocotools has 10."""
    coco_eval = _faster_eval(gt, dt)
    coco_eval.params.maxDets = [1, 5, 100]
    return coco_eval


def _faster_eval(gt, dt):
    from faster_coco_eval import COCOeval_faster

    return COCOeval_faster(gt, dt, "bbox", print_function=lambda *a: None)


@pytest.mark.parametrize("wrong", [_crowd_counted, _iou_shifted, _fewer_dets])
def test_auto_falls_back_to_pycocotools_when_the_self_check_fails(monkeypatch, fresh_self_check,
                                                                   wrong):
    from prunekit import evaluate as module

    real = module._faster_coco_eval()
    monkeypatch.setitem(module._LIBRARIES, "faster-coco-eval",
                        lambda: module._Library(real.coco, wrong))
    assert module.resolve_backend("auto") == "pycocotools"
    assert evaluate(_dets([10, 10, 50, 50]), _kitti_gt())["backend"] == "pycocotools"


def _not_installed():
    raise ModuleNotFoundError("No module named 'faster_coco_eval'")


def test_missing_faster_coco_eval(monkeypatch, fresh_self_check, runner, tmp_path):
    from prunekit import evaluate as module

    monkeypatch.setitem(module._LIBRARIES, "faster-coco-eval", _not_installed)
    assert evaluate(_dets([10, 10, 50, 50]), _kitti_gt())["backend"] == "pycocotools"
    dets = tmp_path / "dets.csv"
    dets.write_text("image_id,category_id,score,x,y,w,h\n1,3,0.5,1,2,3,4\n")
    result = runner.invoke(app, ["evaluate", str(dets), "--gt", str(_gt_file(tmp_path)),
                                 "--backend", "faster-coco-eval"])
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "install faster-coco-eval" in lines[0]
    assert "--backend pycocotools" in lines[0]


def test_unknown_backend_is_one_line_naming_the_choices(runner, tmp_path):
    with pytest.raises(PrunekitError, match="backend 'fast' is not a COCO evaluation backend; "
                                            "use one of auto, pycocotools, faster-coco-eval"):
        evaluate(_dets([10, 10, 50, 50]), _kitti_gt(), backend="fast")
    result = runner.invoke(app, ["evaluate", "dets.csv", "--gt", str(_gt_file(tmp_path)),
                                 "--backend", "fast"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "'fast' is not one of 'auto', 'pycocotools', 'faster-coco-eval'" in result.stderr


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_cli_backend_option(runner, tmp_path, backend):
    dets = tmp_path / "dets.csv"
    dets.write_text("image_id,category_id,score,x,y,w,h\n1,3,0.9,10,10,50,50\n")
    result = runner.invoke(app, ["evaluate", str(dets), "--gt", str(_gt_file(tmp_path)),
                                 "--backend", backend])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["backend"] == backend and metrics["per_class"]["circle"] == pytest.approx(1)
