"""The second study's report: verdicts on tables with known answers, figures, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from prunekit.errors import DataError
from prunekit.stats.findings import NOT_REPRODUCED, NOT_TESTABLE, PARTLY, REPRODUCED
from prunekit.stats.findings.kitti import findings, prepare
from prunekit.stats.kitti import report

FILTER = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
WEIGHT = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def _rows(model: str, family: str, dense: float, retained: dict[str, list[float]],
          latency: dict[str, list[float]], runs: int = 3, noise: float = 0.0,
          seed: int = 0) -> list[dict]:
    """Rows of one model: ``retained[g]`` per ratio (pruned state; the fine-tuned state keeps a
    little more), latency per ratio, MACs following the filter ratio."""
    rng = np.random.default_rng(seed)
    rows = []
    for g, ratios in (("filter", FILTER), ("weight", WEIGHT)):
        for state, steps, ids in (("pruned", 0, [1]), ("finetuned", 30, range(1, runs + 1))):
            for k in ids:
                for i, r in enumerate(ratios):
                    keep = retained[g][i] if state == "pruned" else \
                        min(1.0, retained[g][i] + 0.05 * (r > 0))
                    keep = keep + (noise * rng.standard_normal() if r > 0 and steps else 0)
                    rows.append({
                        "scenario": f"{model}.{g}.{state}", "run": k, "ratio": r,
                        "granularity": g, "method": "l1-filter" if g == "filter" else "magnitude",
                        "family": family, "finetune_steps": steps, "map": dense * keep,
                        "map50": min(1.0, 2 * dense * keep),
                        "latency_ms": latency[g][i] * (1 + 0.01 * rng.standard_normal()),
                        "macs": 1e9 * (1 - 0.5 * r if g == "filter" else 1.0),
                        "bytes_stored": 4e6 * (1 - 0.8 * r if g == "weight" else 1 - r),
                        "compression_ratio": 1 / (1 - 0.8 * r) if g == "weight" else 1 / (1 - r),
                        "params_total": 1e6, "params_nonzero": 1e6 * (1 - r),
                        "map50.easy": dense, "map50.moderate": dense * 0.8,
                        "map50.hard": dense * 0.6,
                    })
    return rows


def _study(detr_filter=(1, 0.7, 0.2, 0.02, 0.01, 0.0),
           detr_weight=(1, 1, 0.98, 0.95, 0.92, 0.7, 0.45, 0.2, 0.05, 0.0),
           cnn_filter=(1, 0.95, 0.9, 0.85, 0.8, 0.7),
           cnn_weight=(1, 1, 1, 1, 1, 0.98, 0.95, 0.9, 0.8, 0.6),
           filter_latency=(100, 92, 85, 78, 70, 62), noise=0.01) -> pd.DataFrame:
    flat = [100.0] * len(WEIGHT)
    rows = _rows("deformable-detr-small", "deformable-detr", 0.2,
                 {"filter": list(detr_filter), "weight": list(detr_weight)},
                 {"filter": list(filter_latency), "weight": flat}, noise=noise)
    rows += _rows("yolov3-small", "yolov3", 0.3,
                  {"filter": list(cnn_filter), "weight": list(cnn_weight)},
                  {"filter": list(filter_latency), "weight": flat}, noise=noise, seed=1)
    return pd.DataFrame(rows)


def _verdicts(df: pd.DataFrame) -> dict[int, str]:
    return {f.number: f.verdict for f in findings(prepare(df))}


def test_the_study_as_it_reported_is_reproduced_except_the_runtime_gain():
    v = _verdicts(_study())
    # 1: 30 % lost at 10 %, ≤ 2 % retained from 30 %; 4: holds to 40 %, first < 50 % at 60 %.
    assert v[1] == REPRODUCED and v[4] == REPRODUCED
    # 2: 25 % fewer MACs at 50 %, but compacted: ×1.61 faster, not a minor gain.
    assert v[2] == PARTLY
    # 3: compression ×3.6 at 90 %, flat latency.
    assert v[3] == REPRODUCED
    # 5: DETR retains far less than YOLOv3 at most cells, significantly (noise 1 %).
    assert v[5] == REPRODUCED


def test_verdicts_turn_when_the_numbers_do():
    gentle = _study(detr_filter=(1, 0.95, 0.9, 0.85, 0.8, 0.75),
                    detr_weight=(1, 1, 1, 1, 1, 1, 0.99, 0.98, 0.97, 0.95),
                    filter_latency=(100, 100, 100, 100, 100, 99))
    v = _verdicts(gentle)
    # Filter below weight everywhere, but no early 20 % loss and no collapse: partly.
    assert v[1] == PARTLY
    # A quarter of the MACs and no runtime gain (not compacted): the study's own picture.
    assert v[2] == REPRODUCED
    # Holds to 40 % but never collapses: partly.
    assert v[4] == PARTLY
    # DETR now retains more than YOLOv3's filter curve: not more sensitive on average.
    assert v[5] == NOT_REPRODUCED


def test_finding_1_needs_filter_below_weight():
    v = _verdicts(_study(detr_filter=(1, 1, 1, 1, 1, 1)))
    assert v[1] == NOT_REPRODUCED


def test_without_yolov3_finding_5_is_not_testable():
    df = _study()
    v = _verdicts(df[df["family"] == "deformable-detr"])
    assert v[5] == NOT_TESTABLE
    assert v[1] == REPRODUCED


def test_report_writes_verdicts_tables_and_figures(tmp_path):
    out = tmp_path / "report"
    result = report(_study(), out)
    md = (out / "report.md").read_text()
    for n in range(1, 6):
        assert f"### {n}. " in md
    assert len(result["figures"]) >= 4
    stems = {p.stem for p in result["figures"]}
    assert {"accuracy_map", "retained_map", "latency", "macs", "bytes", "difficulty"} <= stems
    for p in result["figures"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    found = json.loads((out / "findings.json").read_text())
    assert [f["number"] for f in found] == [1, 2, 3, 4, 5]
    # Per-scenario tables: mean and std dev rows; the pruned state's single run has no spread.
    table = pd.read_csv(out / "tables" / "deformable-detr-small.filter.finetuned.csv",
                        index_col=0)
    assert "map" in table.index and "map std" in table.index
    assert table.loc["map", "0%"] == pytest.approx(0.2)
    assert table.loc["map std", "0%"] == pytest.approx(0.0)
    assert table.loc["map std", "50%"] > 0
    # The same input gives the same bytes.
    again = report(_study(), tmp_path / "again")
    assert [p.read_bytes() for p in result["figures"]] == \
        [p.read_bytes() for p in again["figures"]]


def test_a_first_study_table_is_refused_in_one_line(tmp_path):
    df = _study().drop(columns=["family"])
    with pytest.raises(DataError, match="not a table from `make kitti-study`"):
        report(df, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_finding_5_is_judged_per_method():
    # DETR loses more than YOLOv3 under weight pruning but less under filter pruning: the
    # transformer is more sensitive under one method only.
    mixed = _study(detr_filter=(1, 0.98, 0.97, 0.96, 0.95, 0.94),
                   detr_weight=(1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1))
    found = {f.number: f for f in findings(prepare(mixed))}
    assert found[5].verdict == PARTLY
    assert any("weight, fine-tuned: DETR significantly lower at 9 of 9" in e
               for e in found[5].evidence)
    assert any("filter, fine-tuned: DETR significantly lower at 0 of 5" in e
               for e in found[5].evidence)
