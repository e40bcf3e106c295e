"""The first study's declared rules: on the paper's own data, on data that contradicts it, and
on tables that lack what a rule needs."""

from __future__ import annotations

import pandas as pd
import pytest

from prunekit import stats
from prunekit.stats import seeds
from prunekit.stats.findings import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARTLY,
    REPRODUCED,
)
from prunekit.stats.findings.paper import RULES

R = REPRODUCED


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return seeds.paper_results()


def _judge(df: pd.DataFrame) -> dict[str, stats.Finding]:
    return {f.id: f for f in stats.findings(stats.load_results(df))}


def test_every_finding_of_the_paper_is_declared_once() -> None:
    ids = [r.id for r in RULES]
    assert ids == ["1", "2", "3", "4", "5", "6a", "6b", "7", "8", "9", "10", "11"]
    for r in RULES:
        assert r.quote and r.source and r.test and r.margin and r.verdicts, r.id


def test_the_papers_own_data(paper: pd.DataFrame) -> None:
    found = _judge(paper)
    assert {k: f.verdict for k, f in found.items()} == {
        "1": R, "2": R, "3": R, "4": R, "5": PARTLY, "6a": R, "6b": INCONCLUSIVE, "7": R,
        "8": R, "9": NOT_TESTABLE, "10": R, "11": R}
    # Effect sizes with confidence intervals in the evidence, Holm-adjusted p-values beside.
    assert any(line.startswith("DeepLIFT: structured / unstructured at 65% — ")
               and "×0.603 [95 % CI ×0.595, ×0.611]" in line for line in found["4"].evidence)
    assert found["5"].passed == 12 and found["5"].cells == 18
    # 6b: the gap at 95 % is 3.7 % of the unpruned mAP, its interval -8.1 % to +0.7 %: ten runs
    # cannot show it is within the 2.5 % margin, and the evidence says how many could.
    assert found["6b"].runs_needed == 231
    assert any("-3.7% of unpruned" in line for line in found["6b"].evidence)
    assert "seconds_score" in found["9"].evidence[0]
    # The paper's tables are mAP at 0.5: COCO's 0.001 is absent, judged beside as not testable.
    assert found["2"].beside == {"map": NOT_TESTABLE, "adv_map_conf05": NOT_TESTABLE}


def test_contrary_data_is_contradicted(paper: pd.DataFrame) -> None:
    df = paper.copy()
    hydra = df["scenario"].str.contains("hydra")
    structured = df["scenario"].str.startswith("structured")
    df.loc[structured, "latency_ms"] = 80 + 0.1 * df.loc[structured, "run"]  # no longer falls
    df.loc[hydra, "map_conf05"] += 0.05  # HYDRA now wins everywhere
    df.loc[hydra, "latency_ms"] *= 1.3  # and is 30 % slower
    found = _judge(df)
    assert found["2"].verdict == CONTRADICTED
    assert found["5"].verdict == CONTRADICTED  # an effect far beyond the 5 % margin
    assert found["8"].verdict == R  # DeepLIFT is now faster at 50 %
    assert found["4"].verdict == CONTRADICTED  # structured slower than unstructured from 75 %
    assert found["11"].verdict in (CONTRADICTED, NOT_REPRODUCED)


def _hydra_as_deeplift(df: pd.DataFrame, less: float) -> pd.DataFrame:
    """HYDRA's mAP equal to DeepLIFT's run by run, less ``less``."""
    df = df.copy()
    dl = df["scenario"].str.contains("deeplift") & ~df["scenario"].str.contains("grey")
    hy = df["scenario"].str.contains("hydra")
    for g in ("unstructured", "structured"):
        a = df[dl & df["scenario"].str.startswith(g)].sort_values(["ratio", "run"])
        b = df[hy & df["scenario"].str.startswith(g)].sort_values(["ratio", "run"])
        df.loc[b.index, "map_conf05"] = a["map_conf05"].to_numpy() - less
    return df


def test_a_negligible_effect_fails_and_no_effect_is_inconclusive(paper: pd.DataFrame) -> None:
    # A tiny effect at a third of the paper's spread: significantly under the margin (2.5 % of
    # the unpruned mAP), the claim is ruled out, not inconclusive.
    tight = paper.copy()
    mean = tight.groupby(["scenario", "ratio"])["map_conf05"].transform("mean")
    tight["map_conf05"] = mean + (tight["map_conf05"] - mean) / 3
    assert _judge(_hydra_as_deeplift(tight, 0.001))["2"].verdict == NOT_REPRODUCED
    # Three runs at the paper's spread: the intervals are too wide to rule anything out.
    f = _judge(_hydra_as_deeplift(paper, 0.001)[paper["run"] <= 3])["2"]
    assert f.verdict == INCONCLUSIVE and f.runs_needed > 3


def test_missing_scenarios_and_columns_are_named(paper: pd.DataFrame) -> None:
    one = _judge(paper[paper["scenario"] == "unstructured-deeplift"])
    assert one["1"].verdict == R
    assert one["2"].verdict == NOT_TESTABLE
    assert "no unstructured HYDRA scenario" in one["2"].evidence[0]
    no_latency = _judge(paper.drop(columns="latency_ms"))
    for k in ("4", "5", "7", "8", "10", "11"):
        assert no_latency[k].verdict == NOT_TESTABLE
        assert no_latency[k].evidence == ["the results have no 'latency_ms' column (or it is "
                                          "empty)"]
    coco = _judge(paper.rename(columns={"map_conf05": "map"}))
    for k in ("1", "2", "3", "6a", "6b"):
        assert coco[k].verdict == NOT_TESTABLE and "'map_conf05'" in coco[k].evidence[0]
        assert coco[k].beside["map"] == _judge(paper)[k].verdict  # the same rule on `map`


def test_one_run_per_cell_cannot_be_tested(paper: pd.DataFrame) -> None:
    found = _judge(paper[paper["run"] == 1])
    for k in ("2", "3", "4", "5", "6a", "8", "10", "11"):
        assert found[k].verdict == INCONCLUSIVE, k
        assert found[k].runs_needed == 2
        assert any("at least two runs per cell" in line for line in found[k].evidence)


def test_score_time_from_the_grid(paper: pd.DataFrame) -> None:
    df = paper.copy()
    dl = df["scenario"].str.contains("deeplift")
    df["source"] = df["scenario"] + "/run" + df["run"].astype(str)
    df["seconds_score"] = (49.0 * dl + 18.0 * ~dl) * (1 + 0.01 * df["run"])
    df.loc[df["ratio"] == 0, ["seconds_score", "source"]] = None
    f = _judge(df)["9"]
    assert f.verdict == R
    assert "×2.72" in f.evidence[1]
    df["seconds_score"] = 30.0 * (1 + 0.01 * df["run"])
    assert _judge(df)["9"].verdict == NOT_REPRODUCED
    df.loc[dl, "seconds_score"] = 10.0 * (1 + 0.01 * df.loc[dl, "run"])
    assert _judge(df)["9"].verdict == CONTRADICTED


def test_judging_is_fast_enough_for_simulations(paper: pd.DataFrame) -> None:
    # Not a timing test (benchmarks/bench_stats.py times it): judging must not touch the
    # evidence when asked not to, which is what makes thousands of simulated studies cheap.
    from prunekit.stats.findings import judge_all

    found = judge_all(RULES, stats.load_results(paper), evidence=False, beside=False)
    assert all(f.evidence == [] or f.verdict == NOT_TESTABLE for f in found)
    assert [f.verdict for f in found] == [f.verdict for f in _judge(paper).values()]
