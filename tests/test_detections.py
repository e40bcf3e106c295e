"""The detections CSV: exact round trips, any column order, and one-line errors with lines."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from prunekit.detections import COLUMNS, DetectionWriter, check_frame, read_detections
from prunekit.errors import DataError

HEADER = ",".join(COLUMNS) + "\n"
NAMES = {1: "car", 7: "person"}


def _written(*images) -> str:
    out = io.StringIO()
    with DetectionWriter(out) as writer:
        for image in images:
            writer.write(*image)
    return out.getvalue()


def test_header_is_the_spec_header_and_nothing_detected_writes_it_alone():
    assert COLUMNS == ("image_id", "file_name", "category_id", "category", "score",
                       "x", "y", "w", "h")
    assert _written() == HEADER
    frame = read_detections(io.StringIO(HEADER))
    assert len(frame) == 0 and tuple(frame.columns) == COLUMNS
    assert frame["image_id"].dtype == np.int64 and frame["score"].dtype == np.float64


def test_float32_boxes_round_trip_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.rand(500, 4, generator=gen) * torch.tensor([4000.0, 3000.0, 900.0, 700.0])
    scores = torch.rand(500, generator=gen)
    cats = torch.where(torch.rand(500, generator=gen) > 0.5, 1, 7)
    text = _written((42, "img.jpg", boxes, scores, cats, NAMES))
    frame = read_detections(io.StringIO(text))
    back = frame[["x", "y", "w", "h"]].to_numpy().astype(np.float32)
    assert np.array_equal(back, boxes.numpy())
    assert np.array_equal(frame["score"].to_numpy().astype(np.float32), scores.numpy())
    assert frame["category"].tolist() == [NAMES[c] for c in cats.tolist()]
    # Shortest round-trip text: no 17-digit tails from widening float32 to float64.
    assert max(len(v) for line in text.splitlines()[1:] for v in line.split(",")[4:]) <= 15


def test_float64_values_round_trip_exactly_and_tensor_kinds_are_accepted():
    boxes = np.array([[0.1, 1 / 3, 123.456789012345, 1e-7]])
    text = _written((1, "a.jpg", boxes, [0.123456789123], [7], NAMES),
                    (2, "b.jpg", torch.tensor([[1, 2, 3, 4]]), torch.tensor([0.5]),
                     torch.tensor([1]), NAMES),
                    (3, "c.jpg", torch.tensor([[1.5, 2, 3, 4]], dtype=torch.bfloat16),
                     torch.tensor([0.25], dtype=torch.float16), np.array([1.0]), None))
    frame = read_detections(io.StringIO(text))
    assert frame.loc[0, ["x", "y", "w", "h"]].tolist() == boxes[0].tolist()
    assert frame.loc[0, "score"] == 0.123456789123
    assert text.splitlines()[2] == "2,b.jpg,1,car,0.5,1,2,3,4"
    assert text.splitlines()[3] == "3,c.jpg,1,,0.25,1.5,2.0,3.0,4.0"


def test_names_with_commas_and_leading_zeros_survive():
    text = _written((5, "dir,x/000123", np.ones((1, 4)), [1.0], [7], ['per"son']))
    frame = read_detections(io.StringIO(text))
    assert frame.loc[0, "file_name"] == "dir,x/000123"
    assert frame.loc[0, "category"] == 'per"son'


def test_any_column_order_and_extra_columns():
    text = "h,w,note,score,y,x,category_id,image_id\n4,3,hello,0.5,2,1,7,9\n"
    frame = read_detections(io.StringIO(text))
    assert list(frame.columns) == ["image_id", "category_id", "score", "x", "y", "w", "h", "note"]
    assert frame.iloc[0].tolist() == [9, 7, 0.5, 1.0, 2.0, 3.0, 4.0, "hello"]
    assert frame.attrs["source"] == "<stream>"


def test_reads_a_path_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "dets.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "1,a.jpg,7,person,0.9,1,2,3,4\n").encode())
    frame = read_detections(path)
    assert frame["image_id"].tolist() == [1] and frame.attrs["source"] == str(path)


@pytest.mark.parametrize(("text", "message"), [
    ("", "is empty; a detections CSV has at least a header line"),
    ("\n  \n", "is empty"),
    ("image_id,category_id,score,x,y,w\n", "has no 'h' column"),
    ("1,7,0.5,1,2,3,4\n", "has no 'image_id' column"),
    (HEADER + "1,a,7,p,0.5,1,2,3,4\n\n1,a,7,p,high,1,2,3,4\n", "line 4: score is 'high'"),
    (HEADER + '1,"multi\nline",7,p,0.5,1,2,3,4\n1,a,7,p,0.5,1,y,3,4\n', "line 4: y is 'y'"),
    (HEADER + "1,a,7,p,0.5,1,2,,4\n", "line 2: w is empty"),
    (HEADER + "1,a,7,p,0.5,1,2,3\n", "line 2: h is empty"),
    (HEADER + "1,a,7,p,nan,1,2,3,4\n", "line 2: score is 'nan'; expected a finite number"),
    (HEADER + "1.5,a,7,p,0.5,1,2,3,4\n", "line 2: image_id is '1.5'; expected an integer"),
    (HEADER + "1,a,7,p,0.5,10,20,-3,4\n", "line 2: w is '-3'; expected a width ≥ 0"),
    (HEADER + "1,a,7,p,0.5,1,2,3,4\n1,a,7,p,0.5,1,2,3,4,5\n", "line 3: more fields"),
])
def test_bad_files_name_the_file_the_line_and_the_problem(tmp_path, text, message):
    path = tmp_path / "dets.csv"
    path.write_text(text)
    with pytest.raises(DataError, match="dets.csv") as e:
        read_detections(path)
    assert message in str(e.value) and "\n" not in str(e.value).strip()


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_detections(tmp_path / "nope.csv")


def test_integral_float_ids_are_accepted():
    frame = read_detections(io.StringIO("image_id,category_id,score,x,y,w,h\n3.0,7,1,0,0,1,1\n"))
    assert frame["image_id"].tolist() == [3] and frame["image_id"].dtype == np.int64


def test_check_frame_validates_in_memory_frames():
    frame = pd.DataFrame({"image_id": [1], "category_id": [2], "score": [0.5], "x": [0],
                          "y": [0], "w": [-1], "h": [1]}, index=[10])
    with pytest.raises(DataError, match=r"mine, row 10: w is '-1'"):
        check_frame(frame, "mine")


def test_writer_to_a_path_is_atomic(tmp_path):
    path = tmp_path / "dets.csv"
    with pytest.raises(RuntimeError), DetectionWriter(path) as writer:
        writer.write(1, "a.jpg", np.ones((1, 4)), [0.5], [1], NAMES)
        raise RuntimeError("inference failed")
    assert list(tmp_path.iterdir()) == []
    with DetectionWriter(path) as writer:
        assert writer.write(1, "a.jpg", np.ones((2, 4)), [0.5, 0.4], [1, 7], NAMES) == 2
    assert writer.rows == 2
    assert [p.name for p in tmp_path.iterdir()] == ["dets.csv"]
    assert len(read_detections(path)) == 2


def test_writer_rejects_bad_input():
    writer = DetectionWriter(io.StringIO())
    with pytest.raises(ValueError, match="shape"):
        writer.write(1, "a", np.ones((2, 3)), [0.5, 0.5], [1, 1], NAMES)
    with pytest.raises(ValueError, match="no name for category id 3"):
        writer.write(1, "a", np.ones((1, 4)), [0.5], [3], NAMES)
    with pytest.raises(ValueError, match="one name per detection"):
        writer.write(1, "a", np.ones((2, 4)), [0.5, 0.5], [1, 1], ["car"])
    with pytest.raises(ValueError, match="integers"):
        writer.write(1, "a", np.ones((1, 4)), [0.5], [1.5], None)
    with pytest.raises(ValueError, match="not corner coordinates"):
        writer.write(1, "a", np.array([[5.0, 5, -1, 2]]), [0.5], [1], NAMES)
    with pytest.raises(DataError, match="image 1 .* NaN"):
        writer.write(1, "a", np.ones((1, 4)), [float("nan")], [1], NAMES)
