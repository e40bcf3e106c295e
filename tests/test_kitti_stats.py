"""The second study's report: verdicts on tables with known answers, figures, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from prunekit.errors import DataError
from prunekit.stats.findings import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARTLY,
    REPRODUCED,
)
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


def _verdicts(df: pd.DataFrame) -> dict[str, str]:
    return {f.id: f.verdict for f in findings(prepare(df))}


def _findings(df: pd.DataFrame) -> dict[str, object]:
    return {f.id: f for f in findings(prepare(df))}


def test_the_study_as_it_reported():
    f = _findings(_study())
    v = {k: x.verdict for k, x in f.items()}
    # The baseline figures concern the study's ResNet-50 model on KITTI, not the small one.
    assert v["B1"] == v["B2"] == v["B3"] == NOT_TESTABLE
    assert "the results hold deformable-detr-small" in f["B1"].evidence[0]
    # 1: 30 % lost at 10 % (single deterministic measurements), at most 2 % from 30 %.
    assert v["1a"] == v["1b"] == v["1c"] == REPRODUCED
    assert "one deterministic measurement, compared directly" in f["1b"].evidence[1]
    # 2: a quarter of the MACs at 50 %; but compacted, ×1.61 faster: a major gain, the
    # opposite of "minor".
    assert v["2a"] == REPRODUCED
    assert v["2b"] == CONTRADICTED
    # 3: ×3.6 smaller at 90 %; latency flat within 1 % noise, 4 measurements per ratio.
    assert v["3a"] == REPRODUCED
    assert v["3b"] == REPRODUCED
    # 4: holds at 30–40 %, first below half at 60 %.
    assert v["4a"] == v["4b"] == REPRODUCED
    # 5: DETR keeps less than YOLOv3 except where both keep everything (weight 10–40 %).
    assert v["5"] == PARTLY
    assert v["6"] == REPRODUCED


def test_verdicts_turn_when_the_numbers_do():
    gentle = _study(detr_filter=(1, 0.95, 0.9, 0.85, 0.8, 0.75),
                    detr_weight=(1, 1, 1, 1, 1, 1, 0.99, 0.98, 0.97, 0.95),
                    filter_latency=(100, 100, 100, 100, 100, 99))
    v = _verdicts(gentle)
    assert v["1a"] == REPRODUCED  # filter still below weight everywhere
    assert v["1b"] == NOT_REPRODUCED and v["1c"] == NOT_REPRODUCED  # but no collapse
    assert v["2b"] == REPRODUCED  # not compacted: no gain
    assert v["4a"] == REPRODUCED and v["4b"] == NOT_REPRODUCED  # never collapses
    # DETR now keeps about as much as YOLOv3 except at high weight ratios, where it keeps more:
    # no cell passes, three are opposite; three runs do not settle the rest.
    assert v["5"] == INCONCLUSIVE
    assert v["6"] == NOT_REPRODUCED  # filter pruning loses less than the MACs it saves


def test_finding_1a_needs_filter_below_weight():
    assert _verdicts(_study(detr_filter=(1, 1, 1, 1, 1, 1)))["1a"] == CONTRADICTED


def test_without_yolov3_finding_5_is_not_testable():
    df = _study()
    f = _findings(df[df["family"] == "deformable-detr"])
    assert f["5"].verdict == NOT_TESTABLE
    assert f["5"].evidence == ["the results hold no YOLOv3 model (family 'yolov3')"]
    assert f["1b"].verdict == REPRODUCED


def test_without_deformable_detr_nothing_falls_back_to_yolov3():
    df = _study()
    for k, f in _findings(df[df["family"] == "yolov3"]).items():
        assert f.verdict == NOT_TESTABLE, k
        assert f.evidence == ["the results hold no Deformable DETR model (family "
                              "'deformable-detr')"], k


def test_missing_columns_are_named():
    f = _findings(_study().drop(columns=["bytes_stored", "latency_ms"]))
    assert f["3a"].verdict == NOT_TESTABLE and "'bytes_stored'" in f["3a"].evidence[0]
    assert f["3b"].verdict == NOT_TESTABLE and "'latency_ms'" in f["3b"].evidence[0]


def test_the_studys_own_figures():
    from prunekit.stats.seeds import kitti_results

    v = _verdicts(kitti_results())
    # What the study measured passes; one latency measurement cannot be tested; nothing of
    # weight pruning or of a CNN is in its figures.
    assert {k: v[k] for k in ("B1", "B3", "1b", "1c", "2a", "6")} == dict.fromkeys(
        ("B1", "B3", "1b", "1c", "2a", "6"), REPRODUCED)
    assert v["B2"] == v["2b"] == INCONCLUSIVE
    for k in ("1a", "3a", "3b", "4a", "4b", "5"):
        assert v[k] == NOT_TESTABLE, k


def test_report_writes_verdicts_tables_and_figures(tmp_path):
    out = tmp_path / "report"
    result = report(_study(), out)
    md = (out / "report.md").read_text()
    for n in ("B1", "1a", "2b", "3b", "4b", "5", "6"):
        assert f"### {n}. " in md
    assert "| the study's own figures |" in md
    assert "the declared rules (version" in md
    assert len(result["figures"]) >= 4
    stems = {p.stem for p in result["figures"]}
    assert {"accuracy_map", "retained_map", "latency", "macs", "bytes", "difficulty"} <= stems
    for p in result["figures"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    found = json.loads((out / "findings.json").read_text())
    assert [f["id"] for f in found] == ["B1", "B2", "B3", "1a", "1b", "1c", "2a", "2b", "3a",
                                        "3b", "4a", "4b", "5", "6"]
    assert found[4]["seed_verdict"] == REPRODUCED
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
    assert (out / "report.md").read_bytes() == (tmp_path / "again" / "report.md").read_bytes()


def test_a_first_study_table_is_refused_in_one_line(tmp_path):
    df = _study().drop(columns=["family"])
    with pytest.raises(DataError, match="not a table from `make kitti-study`"):
        report(df, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_finding_5_is_judged_per_cell_of_both_methods():
    # DETR loses more than YOLOv3 under weight pruning but less under filter pruning.
    mixed = _study(detr_filter=(1, 0.98, 0.97, 0.96, 0.95, 0.94),
                   detr_weight=(1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1))
    f = _findings(mixed)["5"]
    assert (f.verdict, f.passed, f.cells) == (PARTLY, 9, 14)
    assert any(line.startswith("weight 90% — ") and "→ pass" in line for line in f.evidence)
    assert any(line.startswith("filter 20% — ") and "→ opposite" in line for line in f.evidence)
