"""The detections CSV: one row per detection, written by `detect` and read by `evaluate`.

The header is ``image_id,file_name,category_id,category,score,x,y,w,h``; ``x, y`` is the box's
top-left corner and ``w, h`` its size, in original-image pixels (the COCO bbox convention); ids
are the dataset's COCO ids. Readers accept extra columns and any column order, and need only the
columns evaluation uses (``image_id, category_id, score, x, y, w, h``).

Number format: every float is written as the *shortest* decimal that reads back as exactly the
same value at the precision it was given in (float16, float32 or float64 — numpy's round-trip
``repr``). So a float32 box survives ``write`` then ``read`` bit for bit (after casting back to
float32), a float64 one exactly, and the file stays short: a float32 0.1 is written ``0.1``, not
``0.10000000149011612`` as widening it to a Python float would print it.
A fixed ``%.6g`` would move pixels by up to 0.05 at 4-digit coordinates; ``.7g`` still cannot
tell all float32 values apart (float32 needs up to 9 significant digits).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from prunekit.errors import DataError
from prunekit.files import temporary_beside

COLUMNS = ("image_id", "file_name", "category_id", "category", "score", "x", "y", "w", "h")
REQUIRED = ("image_id", "category_id", "score", "x", "y", "w", "h")
_INT_COLUMNS = ("image_id", "category_id")
_FLOAT_COLUMNS = ("score", "x", "y", "w", "h")
# Text columns must stay text: a file name "000123.jpg" is safe, but "000123" would lose its
# zeros, and a category called "NA" would become missing, if pandas were left to guess.
_TEXT_COLUMNS = ("file_name", "category")

# pandas < 3 parses floats with a fast converter that can be off by one unit in the last place;
# "round_trip" is exact. pandas 3 is exact by default and deprecates the option.
_EXACT_FLOATS: dict[str, Any] = (
    {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
)


Target = IO[str] | str | os.PathLike | None
Source = IO[str] | str | os.PathLike | None


class DetectionWriter:
    """Streams detections to a CSV, one image at a time.

    Use it as a context manager: entering writes the header, so a model that detects nothing
    still leaves a valid (header-only) file. ``target`` is an open text stream (left open), a
    path, or ``None`` / ``"-"`` for stdout. A path is written through a temporary file that is
    renamed into place only when the ``with`` block ends without an exception, so a failed run
    never leaves a partial CSV behind.

    Example::

        with DetectionWriter("dets.csv") as out:
            for image_id, file_name, boxes, scores, cat_ids in results:
                out.write(image_id, file_name, boxes, scores, cat_ids, {1: "car", 2: "person"})

    Attributes:
        rows: Detections written so far.
    """

    def __init__(self, target: Target = None) -> None:
        self.rows = 0
        self._header_written = False
        self._path: Path | None = None
        self._tmp: str | None = None
        if target is None or str(target) == "-":
            self._stream: IO[str] = sys.stdout
        elif isinstance(target, str | os.PathLike):
            self._path = Path(target)
            fd, self._tmp = temporary_beside(self._path)
            self._stream = os.fdopen(fd, "w", newline="", encoding="utf-8")
        else:
            self._stream = target
        # csv quotes file and category names that hold commas or quotes; "\n" line ends
        # because the file is opened with newline="" (the csv module's requirement).
        self._csv = csv.writer(self._stream, lineterminator="\n")

    def __enter__(self) -> DetectionWriter:
        self.write_header()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(commit=exc_type is None)

    def write_header(self) -> None:
        """Write the header line (once; later calls do nothing)."""
        if not self._header_written:
            self._csv.writerow(COLUMNS)
            self._header_written = True

    def write(
        self,
        image_id: int,
        file_name: str,
        boxes_xywh: Any,
        scores: Any,
        category_ids: Any,
        category_names: Mapping[int, str] | Sequence[str] | None = None,
    ) -> int:
        """Write the detections of one image.

        Args:
            image_id: The image's COCO id.
            file_name: The image's ``file_name`` as in the dataset (or its path).
            boxes_xywh: K×4 boxes ``x, y, w, h`` in original-image pixels (tensor or array).
            scores: K confidences.
            category_ids: K COCO category ids (integers).
            category_names: Either a mapping from category id to name (e.g. built once from the
                dataset's categories), or a sequence of K names, one per detection. ``None``
                leaves the ``category`` column empty; evaluation does not need it.

        Returns:
            The number of rows written (K).

        Raises:
            ValueError: Arrays of mismatched shapes, non-integer category ids, negative box
                sizes or a category id the mapping lacks: bugs in the caller, not user input.
            DataError: NaN or infinite boxes or scores (a diverged model, for instance).
        """
        self.write_header()
        boxes = _to_numpy(boxes_xywh)
        score = _to_numpy(scores)
        cats = _to_numpy(category_ids)
        k = len(score)
        if boxes.shape != (k, 4) and not (k == 0 and boxes.size == 0):
            raise ValueError(f"boxes_xywh has shape {tuple(boxes.shape)}; expected ({k}, 4) "
                             f"for {k} scores")
        if score.ndim != 1 or cats.shape != (k,):
            raise ValueError(f"scores and category_ids must be 1-D of the same length; got "
                             f"{tuple(score.shape)} and {tuple(cats.shape)}")
        if k == 0:
            return 0
        boxes = boxes.reshape(k, 4)
        if not (np.isfinite(boxes).all() and np.isfinite(score).all()):
            raise DataError(f"the detections for image {image_id} ({file_name}) hold NaN or "
                            f"infinite boxes or scores; the model's weights may have diverged: "
                            f"check the checkpoint")
        if (boxes[:, 2:] < 0).any():
            raise ValueError(f"image {image_id}: negative box width or height; boxes must be "
                             f"x, y, w, h (top-left corner and size), not corner coordinates")
        cat_ints = cats.astype(np.int64)
        if not (cat_ints == cats).all():
            raise ValueError(f"category_ids must be integers; got {cats[cat_ints != cats][0]}")
        names = _names(category_names, cat_ints.tolist())

        # numpy's str() of a float array is the shortest round-trip decimal at the array's own
        # precision (see the module docstring); integers print as integers.
        box_text = _float_text(boxes).tolist()
        score_text = _float_text(score).tolist()
        image = str(int(image_id))
        self._csv.writerows(
            [image, file_name, str(c), n, s, *b]
            for c, n, s, b in zip(cat_ints.tolist(), names, score_text, box_text, strict=True)
        )
        self.rows += k
        return k

    def close(self, commit: bool = True) -> None:
        """Flush; for a path, move the file into place (``commit``) or delete it."""
        if self._path is None:
            self._stream.flush()
            return
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        try:
            self._stream.close()
            if commit:
                os.replace(tmp, self._path)
                return
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def read_detections(source: Source = None) -> pd.DataFrame:
    """Read a detections CSV.

    Args:
        source: A path, an open text stream, or ``None`` / ``"-"`` for stdin.

    Returns:
        A frame with the file's columns, those of :data:`COLUMNS` first, in that order, then any
        extra ones. ``image_id`` and ``category_id`` are int64; ``score, x, y, w, h`` float64;
        ``file_name`` and ``category`` text. A header-only file gives an empty frame. The file's
        display name is in ``frame.attrs["source"]``.

    Raises:
        DataError: An empty or unreadable file, a missing required column, or a value that is
            not a finite number (named with its line), a non-integer id or a negative size.
    """
    text, name = _read_text(source)
    if not text.strip():
        raise DataError(f"{name} is empty; a detections CSV has at least a header line "
                        f"({','.join(COLUMNS)})")
    try:
        with warnings.catch_warnings():
            # With index_col=False pandas only warns about a row longer than the header (and
            # drops its extra fields); without it, it would silently shift every column.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text), index_col=False, keep_default_na=False,
                                skipinitialspace=True, dtype=dict.fromkeys(_TEXT_COLUMNS, str),
                                **_EXACT_FLOATS)
    except (pd.errors.ParserWarning, pd.errors.ParserError, ValueError) as e:
        line = _first_long_row(text)
        if line is not None:
            raise DataError(f"{name}, line {line}: more fields than the header has columns; "
                            f"quote values that contain commas") from None
        raise DataError(f"{name} is not a valid CSV: {' '.join(str(e).split())}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return _validated(frame, name, lambda row: f"line {_line_number(text, row)}")


def check_frame(frame: pd.DataFrame, name: str = "detections") -> pd.DataFrame:
    """Validate and normalise a detections frame built in memory (as :func:`read_detections`)."""
    return _validated(frame.copy(), name, lambda row: f"row {frame.index[row]}")


def _validated(frame: pd.DataFrame, name: str, where: Callable[[int], str]) -> pd.DataFrame:
    for column in REQUIRED:
        if column not in frame.columns:
            raise DataError(f"{name} has no '{column}' column; a detections CSV needs the header "
                            f"{','.join(COLUMNS)} (any order, extra columns allowed)")
    for column in (*_INT_COLUMNS, *_FLOAT_COLUMNS):
        raw = frame[column]
        if column in _INT_COLUMNS and pd.api.types.is_signed_integer_dtype(raw):
            frame[column] = raw.astype(np.int64)  # the usual case; no trip through float
            continue
        if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
            values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = pd.to_numeric(raw.astype(object), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if column in _INT_COLUMNS:
            # Beyond int64 a cast would wrap or saturate: a different id, silently.
            bad |= (values != np.round(values)) | (values >= 2.0**63) | (values < -2.0**63)
        elif column in ("w", "h"):
            bad |= values < 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = raw.iloc[row]
            found = "empty" if pd.isna(value) or not str(value).strip() else repr(str(value))
            expected = {"w": "a width ≥ 0 (boxes are x, y, w, h: corner and size)",
                        "h": "a height ≥ 0 (boxes are x, y, w, h: corner and size)",
                        "image_id": "an integer COCO image id (64-bit)",
                        "category_id": "an integer COCO category id (64-bit)"}.get(column,
                                                                          "a finite number")
            raise DataError(f"{name}, {where(row)}: {column} is {found}; expected {expected}")
        frame[column] = values.astype(np.int64) if column in _INT_COLUMNS else values
    for column in _TEXT_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].astype(str)
    order = [c for c in COLUMNS if c in frame.columns]
    frame = frame[order + [c for c in frame.columns if c not in order]]
    frame.attrs["source"] = name
    return frame


def _read_text(source: Source) -> tuple[str, str]:
    if source is None or str(source) == "-":
        if sys.stdin.isatty():
            raise DataError("no detections CSV given and stdin is a terminal; pass a file or "
                            "pipe one in (e.g. `prunekit detect ... | prunekit evaluate --gt "
                            "val.json`)")
        return _as_text(sys.stdin.read()), "<stdin>"
    if not isinstance(source, str | os.PathLike):
        return _as_text(source.read()), str(getattr(source, "name", "<stream>"))
    path = Path(source)
    try:
        # utf-8-sig: spreadsheet programs put a byte-order mark before the header.
        return path.read_text(encoding="utf-8-sig"), str(path)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a detections CSV") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; a detections CSV is a text file") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _as_text(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = str(text, "utf-8-sig")
    return text.removeprefix("\ufeff")


def _line_number(text: str, row: int) -> int:
    """The 1-based line where data row ``row`` starts, counting the header, skipped blank lines
    and quoted fields that span lines (which is why this re-reads with the csv module rather
    than assuming row + 2). Only called on the error path."""
    reader = csv.reader(io.StringIO(text))
    next(reader, None)
    line, seen = reader.line_num, -1
    for record in reader:
        if record:
            seen += 1
            if seen == row:
                return line + 1
        line = reader.line_num
    return row + 2


def _first_long_row(text: str) -> int | None:
    """The line of the first row with more fields than the header, if any."""
    reader = csv.reader(io.StringIO(text))
    try:
        width = len(next(reader, []))
        line = reader.line_num
        for record in reader:
            if len(record) > width:
                return line + 1
            line = reader.line_num
    except csv.Error:
        pass  # pandas' own message says what is wrong
    return None


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        import torch

        values = values.detach().cpu()
        if values.dtype == torch.bfloat16:
            values = values.float()  # bfloat16 has no numpy dtype; float32 holds it exactly
        values = values.numpy()
    array = np.asarray(values)
    if array.dtype.kind == "f" and array.dtype not in (np.float16, np.float32, np.float64):
        array = array.astype(np.float64)
    return array


def _float_text(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iub":
        return values.astype(np.int64).astype(str)
    return values.astype(str)


def _names(names: Mapping[int, str] | Sequence[str] | None, ids: list[int]) -> list[str]:
    if names is None:
        return [""] * len(ids)
    if isinstance(names, Mapping):
        missing = [i for i in ids if i not in names]
        if missing:
            raise ValueError(f"category_names has no name for category id {missing[0]}")
        return [str(names[i]) for i in ids]
    if isinstance(names, str) or len(names) != len(ids):
        raise ValueError("category_names must map category id → name, or give one name per "
                         f"detection ({len(ids)})")
    return [str(n) for n in names]


