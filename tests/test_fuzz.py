"""Fuzzing (issue 16): every parser, fed mutated valid inputs, raises nothing but
:class:`~prunekit.errors.PrunekitError` (or accepts the input), never hangs, and writes no output
file when it refuses; and a sample of bad inputs through the real CLI exits 1 with one line on
stderr that names the file, and no traceback.

Generated bad inputs per run (hypothesis ``max_examples``, derandomized, so CI sees the same ones):

    checkpoint bytes: flips, truncations, insertions, deletions ..... 500
    checkpoint safetensors headers: dtypes, shapes, offsets, metadata  400
    detections CSV: cells, columns, encodings, line endings .......... 400
    COCO JSON: missing keys, wrong types, huge numbers, null ......... 400
    KITTI labels: field counts, non-numbers, NaN, garbage ............ 250
    Darknet .cfg (parsed and built) .................................. 300
    Darknet .weights: lengths and headers ............................ 150
    HF Deformable DETR config.json ................................... 50
    CLI sample (one subprocess per parser) ........................... 6
                                                                total 2,456
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from prunekit.errors import PrunekitError
from tests.conftest import FIXTURES, ROOT, fixture_path, tiny_checkpoint

FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=False,
            suppress_health_check=list(HealthCheck))
HANG_S = 20  # one input taking longer than this is a hang


@contextlib.contextmanager
def _no_hang(seconds: int = HANG_S):
    def alarm(*_):
        raise TimeoutError(f"a parser ran for more than {seconds} s on one input")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _refused_or_accepted(fn, *args, strict: bool = False, **kwargs) -> PrunekitError | None:
    """Call ``fn``: a PrunekitError is returned, any other exception fails the test; with
    ``strict``, so does a RuntimeWarning (numpy's sign of a value silently cast or lost)."""
    with _no_hang(), warnings.catch_warnings():
        if strict:
            warnings.simplefilter("error", RuntimeWarning)
        try:
            fn(*args, **kwargs)
        except PrunekitError as e:
            assert str(e).strip() and "\n" not in str(e).strip(), repr(str(e))
            return e
    return None


# ------------------------------------------------------------------------ generic mutations

GARBAGE_TEXT = ["", " ", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400",
                "-1", "-0", "0", "1e308", "9" * 40, "-" + "9" * 40, "0x10", "1_000", "1,5",
                "True", "None", "null", "NA", "abc", '"', "'", "\x00", "\u2028", "é", "1e-400",
                "3.5", "-3.5", str(2**63), str(-2**63 - 1), str(2**31)]
HUGE = [2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**64, 10**30, -1, -2**63, 0]


def _garbage_json() -> st.SearchStrategy:
    leaf = st.one_of(st.none(), st.booleans(), st.sampled_from(HUGE), st.integers(),
                     st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from(GARBAGE_TEXT), st.text(max_size=8))
    return st.recursive(leaf, lambda kids: st.lists(kids, max_size=3) |
                        st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=6)


def _byte_ops(size: int, hot: int | None = None) -> st.SearchStrategy:
    """Lists of byte edits on a ``size``-byte input; positions favour the first ``hot``."""
    last = max(size - 1, 0)
    pos = st.integers(0, last) if hot is None else \
        st.one_of(st.integers(0, min(hot, last)), st.integers(0, last))
    op = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("set"), pos, st.integers(0, 255)),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
    )
    return st.lists(op, min_size=1, max_size=4)


def _apply_bytes(data: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op, at, *rest in ops:
        at = min(at, max(len(buf) - 1, 0))
        if op == "flip" and buf:
            buf[at] ^= 1 << rest[0]
        elif op == "set" and buf:
            buf[at] = rest[0]
        elif op == "truncate":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = rest[0]
        elif op == "delete":
            del buf[at:at + rest[0]]
    return bytes(buf)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a JSON value, the root included."""
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


def _mutate_json(base: Any, draw) -> Any:
    """``base`` with 1-3 of: a value replaced by garbage, a key or item deleted, an item
    duplicated, a value wrapped in a list."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if not path:
            kind = draw(st.sampled_from(["replace", "keep"]))
            if kind == "replace":
                doc = draw(_garbage_json())
            continue
        parent = functools.reduce(lambda v, k: v[k], path[:-1], doc)
        key = path[-1]
        kind = draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "wrap"]))
        if kind == "replace":
            parent[key] = draw(_garbage_json())
        elif kind == "delete":
            del parent[key]
        elif kind == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        else:
            parent[key] = [parent[key]]
    return doc


# ------------------------------------------------------------------------------ checkpoints


@functools.cache
def _checkpoint_bytes() -> bytes:
    """A tiny checkpoint with a mask (stored as the sparse bitmap), a zeroed tensor stored
    sparsely with its own bitmap, and a score: every decoding path."""
    import torch

    from prunekit import checkpoint

    ck = tiny_checkpoint()
    convs = [k for k, v in ck.state.items() if k.endswith("conv.weight") and v.numel() >= 256]
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(ck.state[convs[0]].shape, generator=g) > 0.7
    ck.state[convs[0]] = ck.state[convs[0]] * keep
    ck.masks[convs[0]] = keep
    ck.state[convs[1]] = ck.state[convs[1]] * (torch.rand(ck.state[convs[1]].shape,
                                                          generator=g) > 0.8)
    ck.scores[convs[2]] = torch.rand(ck.state[convs[2]].shape, generator=g)
    ck.add_history("init", {"fuzz": True})
    return checkpoint.to_bytes(ck)


def _header(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _assemble(header: Any, payload: bytes, digest: bool) -> bytes:
    from prunekit.container import sign

    text = json.dumps(header, allow_nan=True).encode()
    text += b" " * (-len(text) % 8)
    data = struct.pack("<Q", len(text)) + text + payload
    if digest:
        # the test's own re-signing may fail on a garbled header: then it goes unsigned
        with contextlib.suppress(Exception):
            data = sign(data)
    return data


def test_checkpoint_fuzz_baseline_loads():
    from prunekit.checkpoint import from_bytes

    data = _checkpoint_bytes()
    ck = from_bytes(data, "fuzz.st")
    assert ck.masks and ck.scores
    header, payload = _header(data)
    meta = header["__metadata__"]
    meta.pop("digest")
    assert from_bytes(_assemble(header, payload, digest=True), "x").masks  # re-signed loads


@settings(max_examples=500, **FUZZ)
@given(st.data())
def test_checkpoint_bytes_fuzz(data):
    from prunekit.checkpoint import from_bytes

    base = _checkpoint_bytes()
    (n,) = struct.unpack("<Q", base[:8])
    ops = data.draw(_byte_ops(len(base), hot=n + 64))
    _refused_or_accepted(from_bytes, _apply_bytes(base, ops), "fuzz.st")


_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "X", ""]


class _Case:
    """Mutated bytes that print as the changes made, not as megabytes."""

    def __init__(self, data: bytes, changes: list[str]) -> None:
        self.data, self.changes = data, changes

    def __repr__(self) -> str:
        return f"<{len(self.data):,} bytes: {'; '.join(self.changes)}>"


def _short(value: Any) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


@st.composite
def _mutated_header(draw) -> _Case:
    base = _checkpoint_bytes()
    header, payload = _header(base)
    meta = header["__metadata__"]
    meta.pop("digest")
    changes: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        tensors = sorted(k for k, v in header.items() if k != "__metadata__"
                         and isinstance(v, dict))
        target = draw(st.sampled_from(["tensor", "tensor", "metadata", "layout", "json"]))
        if target == "tensor" and tensors:
            name = draw(st.sampled_from(
                [t for t in tensors if t.startswith(("masks.", "sparse.", "nonzero.", "scores."))]
                + tensors[:20]))
            entry = header[name]
            field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "delete", "whole"]))
            if field == "dtype":
                value = entry["dtype"] = draw(st.sampled_from(_DTYPES) | _garbage_json())
            elif field == "shape":
                value = entry["shape"] = draw(
                    st.lists(st.sampled_from(HUGE) | st.integers(-3, 64), max_size=4)
                    | _garbage_json())
            elif field == "data_offsets":
                value = entry["data_offsets"] = draw(
                    st.lists(st.sampled_from(HUGE) | st.integers(0, len(payload) + 8),
                             max_size=3) | _garbage_json())
            elif field == "delete":
                value = header.pop(name)
            else:
                value = header[name] = draw(_garbage_json())
            changes.append(f"{name}.{field} = {_short(value)}")
        elif target == "metadata":
            key = draw(st.sampled_from(["prunekit", "family", "arch", "classes", "input",
                                        "history", "layout", "digest", "extra"]))
            how = draw(st.sampled_from(["json", "text", "raw", "delete"]))
            if how == "json":
                meta[key] = json.dumps(draw(_garbage_json()), allow_nan=True)
            elif how == "text":
                meta[key] = draw(st.sampled_from(GARBAGE_TEXT) | st.text(max_size=10))
            elif how == "raw":  # not a string: safetensors itself refuses it
                meta[key] = draw(_garbage_json())
            else:
                meta.pop(key, None)
            changes.append(f"metadata {key} = {_short(meta.get(key, '<deleted>'))}")
        elif target == "layout" and isinstance(meta.get("layout"), str):
            with contextlib.suppress(ValueError):
                meta["layout"] = json.dumps(_mutate_json(json.loads(meta["layout"]), draw),
                                            allow_nan=True)
                changes.append(f"metadata layout = {_short(meta['layout'])}")
        else:  # a JSON value somewhere inside arch, classes, input or history
            key = draw(st.sampled_from(["arch", "classes", "input", "history"]))
            with contextlib.suppress(ValueError, TypeError):
                meta[key] = json.dumps(_mutate_json(json.loads(meta[key]), draw),
                                       allow_nan=True)
                changes.append(f"metadata {key} = {_short(meta[key])}")
    digest = draw(st.booleans())
    changes.append("re-signed" if digest else "unsigned")
    return _Case(_assemble(header, payload, digest=digest), changes)


def _layout(meta: dict, change) -> None:
    layout = json.loads(meta["layout"])
    change(layout)
    meta["layout"] = json.dumps(layout)


def _first(kind: str):
    return lambda layout: next(iter(layout[kind]))


# Headers the fuzzer found that prunekit/checkpoint.py (not this to change) does not
# turn into a CheckpointError yet: (metadata or entry change, exception it raises today).
KNOWN_BAD_HEADERS = {
    "data_offsets-not-a-list": (lambda h, m: h[next(k for k in h if k != "__metadata__")]
                                .update(data_offsets=1), "TypeError"),
    "data_offsets-empty": (lambda h, m: h[next(k for k in h if k != "__metadata__")]
                           .update(data_offsets=[]), "IndexError"),
    "layout-null": (lambda h, m: m.update(layout="null"), "AttributeError"),
    "layout-mask-shape-nested": (lambda h, m: _layout(m, lambda lo: lo["masks"].update(
        {_first("masks")(lo): [[8], 8, 3, 3]})), "ValueError"),
    "layout-sparse-no-bitmap": (lambda h, m: _layout(m, lambda lo: lo["sparse"][
        _first("sparse")(lo)].pop("bitmap")), "KeyError"),
    "layout-sparse-without-tensor": (lambda h, m: _layout(m, lambda lo: lo["sparse"].update(
        {"no.such.tensor": {"shape": [1], "bitmap": "nonzero"}})), "KeyError"),
    "layout-sparse-shape-not-the-masks": (lambda h, m: _layout(m, lambda lo: lo["sparse"][
        _first("masks")(lo)].update(shape=[3, 3])), "IndexError"),
}


@pytest.mark.parametrize("change", sorted(KNOWN_BAD_HEADERS))
def test_checkpoint_known_bad_headers(change):
    from prunekit.checkpoint import from_bytes

    header, payload = _header(_checkpoint_bytes())
    header["__metadata__"].pop("digest")
    KNOWN_BAD_HEADERS[change][0](header, header["__metadata__"])
    _refused_or_accepted(from_bytes, _assemble(header, payload, digest=True), "fuzz.st")


@settings(max_examples=400, phases=[Phase.explicit, Phase.reuse, Phase.generate], **FUZZ)
@given(case=_mutated_header())
def test_checkpoint_header_fuzz(case):
    from prunekit.checkpoint import from_bytes

    _refused_or_accepted(from_bytes, case.data, "fuzz.st")


# ---------------------------------------------------------------------------- detections CSV

_CSV_HEADER = ["image_id", "file_name", "category_id", "category", "score", "x", "y", "w", "h"]
_CSV_ROWS = [["1", "a.jpg", "1", "car", "0.9", "10", "20", "30.5", "40"],
             ["1", "a.jpg", "2", "person", "0.25", "0", "0", "5", "5"],
             ["2", "b.jpg", "1", "car", "0.5", "1.5", "2.5", "3.5", "4.5"]]

_COCO = {
    "info": {"description": "fuzz"},
    "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
               {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 1200,
         "iscrowd": 0, "difficulty": "easy"},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "area": 25,
         "iscrowd": 0, "difficulty": "hard"},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 1}],
    "categories": [{"id": 1, "name": "car", "supercategory": "x"},
                   {"id": 2, "name": "person"}],
}


@st.composite
def _mutated_csv(draw) -> bytes:
    rows = [list(_CSV_HEADER)] + [list(r) for r in _CSV_ROWS]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cell", "cell", "cell", "drop-column", "rename", "extra",
                                     "short-row", "long-row", "no-header", "dup-row"]))
        if kind == "cell" and len(rows) > 1:
            r = draw(st.integers(0, len(rows) - 1))
            if rows[r]:
                c = draw(st.integers(0, len(rows[r]) - 1))
                rows[r][c] = draw(st.sampled_from(GARBAGE_TEXT) | st.text(max_size=12)
                                  | st.floats().map(repr) | st.sampled_from(HUGE).map(str))
        elif kind == "drop-column" and rows[0]:
            c = draw(st.integers(0, len(rows[0]) - 1))
            for row in rows:
                if c < len(row):
                    del row[c]
        elif kind == "rename" and rows[0]:
            c = draw(st.integers(0, len(rows[0]) - 1))
            rows[0][c] = draw(st.sampled_from(_CSV_HEADER + [" x", "X", "", "image_id "])
                              | st.text(max_size=6))
        elif kind == "extra":
            for row in rows:
                row.append(draw(st.sampled_from(GARBAGE_TEXT)))
        elif kind == "short-row" and len(rows) > 1:
            rows[-1] = rows[-1][:draw(st.integers(0, len(rows[-1])))]
        elif kind == "long-row":
            rows[-1] = rows[-1] + ["1"] * draw(st.integers(1, 3))
        elif kind == "no-header" and len(rows) > 1:
            rows = rows[1:]
        elif kind == "dup-row" and len(rows) > 1:
            rows.append(list(rows[draw(st.integers(1, len(rows) - 1))]))
    quote = draw(st.booleans())
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    cell = (lambda v: '"' + v.replace('"', '""') + '"') if quote else (lambda v: v)
    text = end.join(",".join(cell(v) for v in row) for row in rows) + draw(
        st.sampled_from([end, "", end * 3]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16",
                                     "utf-16-le", "cp1252"]))
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 4)) == 0:
        raw = _apply_bytes(raw, draw(_byte_ops(len(raw))))
    return raw


@settings(max_examples=400, **FUZZ)
@given(raw=_mutated_csv())
def test_detections_csv_fuzz(raw, tmp_path_factory):
    from prunekit.detections import read_detections
    from prunekit.evaluate import evaluate

    path = tmp_path_factory.mktemp("csv") / "dets.csv"
    path.write_bytes(raw)
    if _refused_or_accepted(read_detections, path, strict=True) is None:
        _refused_or_accepted(evaluate, path, _COCO)


# --------------------------------------------------------------------------------- COCO JSON


@st.composite
def _mutated_coco(draw) -> bytes:
    doc = _mutate_json(_COCO, draw)
    text = json.dumps(doc, allow_nan=True)
    if draw(st.integers(0, 9)) == 0:
        text = _apply_bytes(text.encode(), draw(_byte_ops(len(text)))).decode("utf-8",
                                                                             "replace")
    return text.encode()


def _coco_consumers(path: Path) -> None:
    """What the commands do with a COCO JSON: classes for `init --dataset`, the dataset for
    `finetune` / `detect`, the ground truth for `evaluate` (plain and by KITTI level)."""
    import pandas as pd

    from prunekit.data.coco import CocoDetection, read_categories
    from prunekit.evaluate import evaluate
    from prunekit.init import _class_names
    read_categories(path)
    _class_names(None, None, path)
    CocoDetection(path, None, images=path.parent)  # the transform is used per image only
    frame = pd.DataFrame([dict(zip(_CSV_HEADER, r, strict=True)) for r in _CSV_ROWS])
    for column in ("image_id", "category_id"):
        frame[column] = frame[column].astype(int)
    for column in ("score", "x", "y", "w", "h"):
        frame[column] = frame[column].astype(float)
    evaluate(frame, path)
    evaluate(frame, path, difficulty="moderate")


@settings(max_examples=400, **FUZZ)
@given(raw=_mutated_coco())
def test_coco_json_fuzz(raw, tmp_path_factory):
    path = tmp_path_factory.mktemp("coco") / "gt.json"
    path.write_bytes(raw)
    _refused_or_accepted(_coco_consumers, path)


def test_coco_baseline_is_accepted(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_COCO))
    assert _refused_or_accepted(_coco_consumers, path) is None


# ------------------------------------------------------------------------------ KITTI labels

_KITTI = {
    "000000": ["Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 "
               "8.41 0.01",
               "DontCare -1 -1 -10 50.00 50.00 90.00 80.00 -1 -1 -1 -1000 -1000 -1000 -10"],
    "000001": ["Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 "
               "1.57",
               "Cyclist 0.00 1 -1.00 500.00 160.00 540.00 220.00 1.70 0.60 1.80 2.00 1.60 25.00 "
               "-1.00"],
    "000002": ["Van 0.00 0 -1.57 100.00 150.00 200.00 250.00 2.20 1.90 4.50 -5.00 1.80 20.00 "
               "-1.50"],
}


@functools.cache
def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 8)).save(out, format="PNG")
    return out.getvalue()


@st.composite
def _mutated_kitti(draw) -> dict[str, bytes]:
    files = {stem: [line.split() for line in lines] for stem, lines in _KITTI.items()}
    raw: dict[str, bytes] = {}
    for _ in range(draw(st.integers(1, 4))):
        stem = draw(st.sampled_from(sorted(files)))
        lines = files[stem]
        kind = draw(st.sampled_from(["field", "field", "field", "drop-field", "add-field",
                                     "type", "empty", "blank-lines", "garbage", "bytes"]))
        if kind in ("field", "drop-field", "add-field", "type") and lines:
            line = lines[draw(st.integers(0, len(lines) - 1))]
            if kind == "field" and line:
                i = draw(st.integers(0, len(line) - 1))
                line[i] = draw(st.sampled_from(GARBAGE_TEXT) | st.floats().map(repr)
                               | st.text(max_size=6)) or "x"
            elif kind == "drop-field" and line:
                del line[draw(st.integers(0, len(line) - 1))]
            elif kind == "add-field":
                line.append(draw(st.sampled_from(GARBAGE_TEXT[1:])) or "1")
            elif kind == "type" and line:
                line[0] = draw(st.sampled_from(["car", "DontCare", "Tram", "Car ", "X"])
                               | st.text(min_size=1, max_size=6))
        elif kind == "empty":
            files[stem] = []
        elif kind == "blank-lines":
            lines.insert(0, [])
        elif kind == "garbage":
            raw[stem] = draw(st.binary(max_size=64))
        elif kind == "bytes":
            text = "\n".join(" ".join(t) for t in lines).encode()
            raw[stem] = _apply_bytes(text, draw(_byte_ops(max(len(text), 1))))
    out = {stem: "".join(" ".join(t) + "\n" for t in lines).encode()
           for stem, lines in files.items()}
    out.update(raw)
    return out


@settings(max_examples=250, **FUZZ)
@given(labels=_mutated_kitti())
def test_kitti_labels_fuzz(labels, tmp_path_factory):
    from prunekit.data.kitti import convert

    root = tmp_path_factory.mktemp("kitti")
    (root / "label_2").mkdir()
    (root / "image_2").mkdir()
    for stem, raw in labels.items():
        (root / "label_2" / f"{stem}.txt").write_bytes(raw)
        (root / "image_2" / f"{stem}.png").write_bytes(_png())
    out = root / "out"
    if _refused_or_accepted(convert, root, out, val_fraction=0.34) is not None:
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    else:
        for name in ("train", "val"):
            json.loads((out / f"{name}.json").read_text())


# ------------------------------------------------------------------------------------ Darknet


@functools.cache
def _small_cfg() -> str:
    """yolov3-tiny.cfg at a sixteenth of its widths (the heads keep 255 = 3·(80+5) filters),
    so building it takes milliseconds."""
    text = fixture_path("darknet", "yolov3-tiny.cfg").read_text()

    def narrow(m: re.Match) -> str:
        return m[0] if m[1] == "255" else f"filters={max(int(m[1]) // 16, 2)}"

    return re.sub(r"filters=(\d+)", narrow, text)


def _cfg_sections(text: str) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in text.splitlines():
        if line.strip().startswith("["):
            sections.append([line.strip()])
        elif sections and "=" in line:
            sections[-1].append(line.strip())
    return sections


_CFG_KEYS = ["filters", "size", "stride", "pad", "padding", "batch_normalize", "activation",
             "from", "layers", "mask", "anchors", "classes", "num", "width", "height",
             "channels"]


@st.composite
def _mutated_cfg(draw) -> str:
    sections = _cfg_sections(draw(st.sampled_from(["small", "small", "small", "full"])) == "full"
                             and fixture_path("darknet", "yolov3.cfg").read_text()
                             or _small_cfg())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(sections) - 1))
        section = sections[i]
        kind = draw(st.sampled_from(["value", "value", "value", "add-key", "drop-key",
                                     "drop-section", "dup-section", "rename", "line"]))
        if kind == "value" and len(section) > 1:
            j = draw(st.integers(1, len(section) - 1))
            key = section[j].split("=", 1)[0]
            value = draw(st.sampled_from(GARBAGE_TEXT) | st.sampled_from(HUGE).map(str)
                         | st.integers(-40, 40).map(str) | st.text(max_size=8)
                         | st.lists(st.integers(-30, 30).map(str), max_size=10).map(",".join))
            section[j] = f"{key}={value}"
        elif kind == "add-key":
            key = draw(st.sampled_from(_CFG_KEYS))
            value = draw(st.sampled_from(GARBAGE_TEXT) | st.integers(-40, 40).map(str))
            section.append(f"{key}={value}")
        elif kind == "drop-key" and len(section) > 1:
            del section[draw(st.integers(1, len(section) - 1))]
        elif kind == "drop-section":
            del sections[i]
            if not sections:
                break
        elif kind == "dup-section":
            sections.insert(i, list(section))
        elif kind == "rename":
            section[0] = draw(st.sampled_from(["[net]", "[convolutional]", "[yolo]", "[route]",
                                               "[shortcut]", "[upsample]", "[maxpool]",
                                               "[region]", "[conv", "[]", "[ yolo ]"]))
        else:
            section.insert(draw(st.integers(0, len(section))),
                           draw(st.sampled_from(["=", "x", "=1", "a==b", "[", "#x=1", ";"])
                                | st.text(max_size=10)))
    return "\n".join("\n".join(s) for s in sections) + "\n"


def _build_cfg(path: Path) -> None:
    from prunekit.init import init

    init(options={"cfg": path})


@settings(max_examples=300, **FUZZ)
@given(text=_mutated_cfg())
def test_darknet_cfg_fuzz(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "fuzz.cfg"
    path.write_text(text, errors="surrogatepass")
    _refused_or_accepted(_build_cfg, path)


@functools.cache
def _weights_case():
    from prunekit.models import registry
    from prunekit.models.yolov3 import darknet

    arch, size = darknet.parse_cfg("small.cfg", text=_small_cfg())
    family = registry.get("yolov3")
    model = family.build(arch, family.input_spec(size=size), [f"c{i}" for i in range(80)])
    return model, darknet.dump_weights(model, seen=12345)


@settings(max_examples=150, **FUZZ)
@given(st.data())
def test_darknet_weights_fuzz(data):
    from prunekit.models.yolov3.darknet import load_weights

    model, base = _weights_case()
    header = data.draw(st.tuples(st.sampled_from([0, 1, 2, -1, 2**31 - 1, -2**31]),
                                 st.sampled_from([0, 1, 2, 5, -1, 2**31 - 1]),
                                 st.integers(-2**31, 2**31 - 1)))
    raw = bytearray(base)
    if data.draw(st.booleans()):
        raw[:12] = struct.pack("<3i", *header)
    raw = _apply_bytes(bytes(raw), data.draw(_byte_ops(len(raw), hot=24)))
    _refused_or_accepted(load_weights, model, raw, "fuzz.weights")


# ------------------------------------------------------------------- HF Deformable DETR folder


@functools.cache
def _hf_folder() -> Path:
    """A tiny HF ``save_pretrained`` folder, built once per session."""
    import torch
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    from prunekit.models.deformable_detr.config import offline

    folder = Path(tempfile.mkdtemp(prefix="prunekit-fuzz-hf-")) / "tiny-detr"
    backbone = ResNetConfig(layer_type="basic", hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                            embedding_size=8, out_features=["stage2", "stage3", "stage4"])
    config = DeformableDetrConfig(backbone_config=backbone, use_timm_backbone=False, backbone=None,
                                  use_pretrained_backbone=False, num_labels=2,
                                  id2label={0: "car", 1: "person"}, d_model=32,
                                  encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                                  decoder_attention_heads=2, encoder_ffn_dim=32,
                                  decoder_ffn_dim=32, num_queries=10, with_box_refine=True)
    torch.manual_seed(0)
    with offline():
        DeformableDetrForObjectDetection(config).save_pretrained(folder)
    return folder


# Fields whose values decide tensor sizes: a garbage value in them must not allocate gigabytes.
_HF_SIZES = ["d_model", "num_queries", "encoder_ffn_dim", "decoder_ffn_dim", "encoder_layers",
             "decoder_layers", "num_feature_levels", "encoder_n_points", "decoder_n_points",
             "num_labels", "encoder_attention_heads", "decoder_attention_heads"]


@st.composite
def _mutated_hf_config(draw) -> dict:
    config = json.loads((_hf_folder() / "config.json").read_text())
    kind = draw(st.sampled_from(["size", "size", "any", "backbone", "delete", "labels"]))
    if kind == "size":
        key = draw(st.sampled_from(_HF_SIZES))
        config[key] = draw(st.sampled_from([0, -1, -64, 1, 3, 31, 33, 2**40, 10**30, 1.5,
                                            "64", None, [64], {"a": 1}, True, math.nan]))
    elif kind == "any":
        config = _mutate_json(config, draw)
    elif kind == "backbone":
        config["backbone_config"] = _mutate_json(config["backbone_config"], draw)
    elif kind == "delete":
        config.pop(draw(st.sampled_from(sorted(config))))
    else:
        config[draw(st.sampled_from(["id2label", "label2id"]))] = draw(_garbage_json())
    return config


@settings(max_examples=50, **FUZZ)
@given(config=_mutated_hf_config())
def test_hf_config_fuzz(config, tmp_path_factory):
    from prunekit.init import init

    folder = tmp_path_factory.mktemp("hf") / "detr"
    shutil.copytree(_hf_folder(), folder)
    (folder / "config.json").write_text(json.dumps(config, allow_nan=True))
    _refused_or_accepted(init, options={"hf": folder})


@pytest.mark.parametrize(("backbone", "fragment"), [
    ({"hidden_sizes": [2**20] * 4}, "describes about"),
    ({"depths": [10**6, 1, 1, 1]}, "blocks"),
    ({"embedding_size": 2**40}, "describes about"),
    ({"hidden_sizes": "64"}, "backbone_config.hidden_sizes"),
    ({"depths": [1, 0, 1, 1]}, "backbone_config.depths is 0"),
])
def test_a_backbone_too_large_to_build_is_refused_before_building(backbone, fragment,
                                                                   tmp_path):
    """A fuzzed backbone_config once allocated gigabytes inside HF's ResNet constructor."""
    from prunekit.init import init

    folder = tmp_path / "detr"
    shutil.copytree(_hf_folder(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["backbone_config"].update(backbone)
    (folder / "config.json").write_text(json.dumps(config))
    error = _refused_or_accepted(init, options={"hf": folder})
    assert error is not None and fragment in str(error), error


# ------------------------------------------------------------------------------ CLI sample


def _cli_cases(tmp: Path) -> list[tuple[list[str], str, Path]]:
    """One bad input per parser: (arguments, the file the message must name, output)."""
    cases = []
    ck = tmp / "bad.st"
    base = _checkpoint_bytes()
    ck.write_bytes(base[:len(base) // 2])
    cases.append((["score", str(ck), "--method", "magnitude", "-o", str(tmp / "scored.st")],
                  ck.name, tmp / "scored.st"))
    csv = tmp / "bad.csv"
    csv.write_text("image_id,category_id,score,x,y,w,h\n1,1,0.5,0,0,nan,4\n")
    gt = tmp / "gt.json"
    gt.write_text(json.dumps(_COCO))
    cases.append((["evaluate", str(csv), "--gt", str(gt), "-o", str(tmp / "m1.json")],
                  csv.name, tmp / "m1.json"))
    good_csv = tmp / "good.csv"
    good_csv.write_text("\n".join(",".join(r) for r in [_CSV_HEADER, *_CSV_ROWS]) + "\n")
    bad_gt = tmp / "bad-gt.json"
    bad_gt.write_text(json.dumps({**_COCO, "images": {"id": 1}}))
    cases.append((["evaluate", str(good_csv), "--gt", str(bad_gt), "-o", str(tmp / "m2.json")],
                  bad_gt.name, tmp / "m2.json"))
    kitti = tmp / "kitti"
    (kitti / "label_2").mkdir(parents=True)
    (kitti / "image_2").mkdir()
    (kitti / "label_2" / "000000.txt").write_text("Car 0 0 0 1 2 3\n")
    (kitti / "image_2" / "000000.png").write_bytes(_png())
    cases.append((["data", "kitti", str(kitti), str(tmp / "kitti-out")], "000000.txt",
                  tmp / "kitti-out"))
    cfg = tmp / "bad.cfg"
    cfg.write_text(_small_cfg().replace("filters=255", "filters=-3", 1))
    cases.append((["init", "--cfg", str(cfg), "-o", str(tmp / "cfg.st")], cfg.name,
                  tmp / "cfg.st"))
    hf = tmp / "hf-detr"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "deformable_detr", "backbone_config": 3}')
    (hf / "model.safetensors").write_bytes(b"")
    cases.append((["init", "--hf", str(hf), "-o", str(tmp / "hf.st")], hf.name,
                  tmp / "hf.st"))
    return cases


def test_cli_sample_one_line_errors_and_no_output(tmp_path):
    pytest.importorskip("transformers")
    if not (FIXTURES / "darknet" / "yolov3-tiny.cfg").exists():
        pytest.skip("the shared fixtures are absent")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "HF_HUB_OFFLINE": "1"}
    cases = _cli_cases(tmp_path)
    procs = [(args, named, out, subprocess.Popen(
        [sys.executable, "-m", "prunekit", *args], cwd=ROOT, env=env, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for args, named, out in cases]
    for args, named, out, proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, (args, err)
        assert "Traceback" not in err, (args, err)
        assert err.count("\n") == 1 and err.startswith("error: "), (args, err)
        assert named in err, (args, err)
        assert not out.exists(), (args, list(tmp_path.iterdir()))
