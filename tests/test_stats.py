"""Tests for prunekit.stats and `prunekit stats`, mostly on the paper's own raw numbers.

prunekit/stats/data/paper/ holds the paper's Tables I–XIV as printed: Tables V–XIV (mAP at the
paper's confidence threshold 0.5, ``map_conf05``, and latency; ten runs × nine ratios for each of
the five scenarios, with the paper's max/min/avg/std dev rows) and Tables I–IV (its ANOVA
p-values). The verdicts' own tests are in tests/test_findings.py.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import f_oneway
from typer.testing import CliRunner

from prunekit import stats
from prunekit.cli import app
from prunekit.errors import DataError
from prunekit.stats import seeds

SCENARIOS = ["structured-deeplift", "structured-hydra", "unstructured-deeplift",
             "unstructured-deeplift-grey", "unstructured-hydra"]
RATIOS = [0.0, 0.25, 0.50, 0.65, 0.75, 0.85, 0.90, 0.95, 0.99]
MAP = "map_conf05"


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    """The paper's Tables V–XIV as one long results table (450 rows: 5 × 10 runs × 9 ratios)."""
    return seeds.paper_results()


@pytest.fixture(scope="module")
def paper_csv(paper: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("paper") / "results.csv"
    paper.to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------ Tables V–XIV

def test_fixture_is_the_full_grid(paper: pd.DataFrame) -> None:
    assert len(paper) == 450
    assert sorted(paper["scenario"].unique()) == SCENARIOS
    assert paper[[MAP, "latency_ms"]].notna().all().all()


@pytest.mark.parametrize("table", seeds.paper_tables(), ids=lambda t: f"{t[0]}-{t[1]}")
def test_runs_table_reproduces_the_papers_summary_rows(paper: pd.DataFrame, table) -> None:
    scenario, metric, runs, printed = table
    first = metric == "map" and scenario == "unstructured-deeplift"
    metric = MAP if metric == "map" else metric
    ours = stats.runs_table(stats.load_results(paper), scenario, metric)
    assert list(ours.index) == [f"run {i}" for i in range(1, 11)] + [
        "max", "min", "avg", "std dev (population)"]
    assert list(ours.columns) == list(runs.columns)
    np.testing.assert_array_equal(ours.iloc[:10].to_numpy(), runs.to_numpy())
    # max and min are picked from the printed values, so they match exactly.
    np.testing.assert_array_equal(ours.loc["max"], printed.loc["max"].astype(float))
    np.testing.assert_array_equal(ours.loc["min"], printed.loc["min"].astype(float))
    # avg is printed to the raw values' last digit, mAP truncated (Table V, 25 %: 0.3869 is
    # printed 0.386), latency rounded: ours is within one unit of that digit.
    unit = 0.001 if metric == MAP else 0.1
    avg = printed.loc["avg"].astype(float)
    assert np.all(np.abs(ours.loc["avg"] - avg) <= unit + 1e-9)
    # std dev: the paper's are population standard deviations, printed to two significant
    # digits. One cell differs in the last digit: Table V at 50 % prints 6.9e-03, while its
    # ten printed (rounded) runs give 6.97e-03; the paper computed from unrounded values.
    for col in runs.columns:
        ours_std = f"{ours.loc['std dev (population)', col]:.1e}"
        if first and col == "50%":
            assert ours_std == "7.0e-03"
            assert ours.loc["std dev (population)", col] == pytest.approx(6.9e-3, abs=1e-4)
        else:
            assert ours_std == printed.loc["std dev", col], col


def test_sample_std_is_an_option(paper: pd.DataFrame) -> None:
    df = stats.load_results(paper)
    table = stats.runs_table(df, "unstructured-deeplift", MAP, std="sample")
    assert "std dev (sample)" in table.index
    runs = df[(df["scenario"] == "unstructured-deeplift") & (df["ratio"] == 0)][MAP]
    assert table.loc["std dev (sample)", "0%"] == pytest.approx(runs.std(ddof=1))
    # The paper's 8.0e-04 is the population value; the sample one would print 8.4e-04.
    assert f"{table.loc['std dev (sample)', '0%']:.1e}" == "8.4e-04"


# --------------------------------------------------------------------------------- Tables I–IV

def test_comparisons_are_the_papers_five(paper: pd.DataFrame) -> None:
    comps = stats.comparisons(stats.load_results(paper))
    assert [c.label for c in comps] == [
        "DeepLIFT vs. HYDRA (Unstructured)", "DeepLIFT vs. HYDRA (Structured)",
        "Unstructured vs. Structured (DeepLIFT)", "Unstructured vs. Structured (HYDRA)",
        "Greyscale vs. Colour (Unstructured DeepLIFT)"]
    assert [(c.a, c.b) for c in comps] == [
        ("unstructured-deeplift", "unstructured-hydra"),
        ("structured-deeplift", "structured-hydra"),
        ("unstructured-deeplift", "structured-deeplift"),
        ("unstructured-hydra", "structured-hydra"),
        ("unstructured-deeplift-grey", "unstructured-deeplift")]


@pytest.mark.parametrize("metric", [MAP, "latency_ms"])
def test_anova_equals_scipy_f_oneway(paper: pd.DataFrame, metric: str) -> None:
    df = stats.load_results(paper)
    result = stats.anova(df, metric)
    assert list(result.pvalues.columns) == RATIOS
    assert not result.notes
    for c in result.comparisons:
        for r in RATIOS:
            a = paper[(paper["scenario"] == c.a) & np.isclose(paper["ratio"], r)][metric]
            b = paper[(paper["scenario"] == c.b) & np.isclose(paper["ratio"], r)][metric]
            assert len(a) == len(b) == 10
            assert result.pvalues.loc[c.label, r] == pytest.approx(f_oneway(a, b).pvalue,
                                                                   rel=1e-12)


@pytest.mark.parametrize("table, metric", [("table01_anova_map", MAP),
                                           ("table02_anova_latency", "latency_ms"),
                                           ("table03_anova_grey_map", MAP),
                                           ("table04_anova_grey_latency", "latency_ms")])
def test_anova_reproduces_the_papers_p_values(paper: pd.DataFrame, table: str,
                                              metric: str) -> None:
    # The paper ran ANOVA on unrounded runs and printed three digits; the printed runs give
    # the same p-values within 1 %.
    printed = seeds.paper_anova(f"{table}.csv")
    ours = stats.anova(stats.load_results(paper), metric).pvalues
    for label, row in printed.iterrows():
        ours_row = ours.loc[label.replace("Greyscale vs Colour", "Greyscale vs. Colour")]
        np.testing.assert_allclose(ours_row.to_numpy(), row.to_numpy(dtype=float), rtol=0.01)


def test_degenerate_groups_give_nan_with_a_note_and_no_warning() -> None:
    df = pd.DataFrame({
        "scenario": ["unstructured-deeplift"] * 3 + ["unstructured-hydra"] * 3
        + ["unstructured-deeplift", "unstructured-hydra"],
        "run": [1, 2, 3, 1, 2, 3, 1, 1],
        "ratio": [0.5] * 6 + [0.9, 0.9],
        "map": [0.3, 0.3, 0.3, 0.2, 0.2, 0.2, 0.1, 0.05],
    })
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = stats.anova(stats.load_results(df), "map")
    row = result.pvalues.loc["DeepLIFT vs. HYDRA (Unstructured)"]
    assert math.isnan(row[0.5]) and math.isnan(row[0.9])
    assert any("no variance within either group" in n and "50%" in n for n in result.notes)
    assert any("fewer than two runs" in n and "90%" in n for n in result.notes)
    assert "n/a" in stats.anova_markdown(result)
    assert stats.f_oneway_p([1.0, 2.0], [3.0, 4.0])[0] == pytest.approx(
        f_oneway([1.0, 2.0], [3.0, 4.0]).pvalue)


# ------------------------------------------------------------------------------------ loading

def test_attribute_columns_win_over_names_and_are_normalised() -> None:
    df = pd.DataFrame({"scenario": ["a", "b"] * 4, "run": [1, 1, 2, 2] * 2,
                       "ratio": [0.5] * 4 + [0.9] * 4, "map": [0.3, 0.2, 0.31, 0.22] * 2,
                       "granularity": ["Unstructured", "weight"] * 4,
                       "method": ["DeepLIFT", "hydra"] * 4, "colour": ["rgb", None] * 4})
    comps = stats.comparisons(stats.load_results(df))
    assert [(c.label, c.a, c.b) for c in comps] == [("DeepLIFT vs. HYDRA (Unstructured)", "a", "b")]


# -------------------------------------------------------------------------------------- report

def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_report_on_the_papers_grid(paper_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = stats.report(paper_csv, out)
    md = (out / "report.md").read_text()
    assert result["report"] == out / "report.md"
    assert len(result["figures"]) >= 4
    for fig in result["figures"]:
        assert fig.read_bytes().startswith(b"\x89PNG")
        assert f"]({fig.relative_to(out)})" in md
    for s in SCENARIOS:
        assert f"### {s}" in md
        assert (out / "tables" / f"{s}__{MAP}.csv").exists()
        assert (out / "tables" / f"{s}__latency_ms.md").exists()
    assert "| DeepLIFT vs. HYDRA (Unstructured) | 1.03e-01 | 9.53e-02 | **1.71e-03**" in md
    assert "| Greyscale vs. Colour (Unstructured DeepLIFT) | **1.13e-23**" in md
    assert "std dev (population) | 8.0e-04 | 7.1e-03" in md
    assert (out / "anova" / f"{MAP}.csv").exists()
    assert (out / "anova" / "latency_ms.csv").exists()
    verdicts = {f["id"]: (f["verdict"], f["seed_verdict"]) for f in result["findings"]}
    for n in ("1", "3", "4"):
        assert verdicts[n] == ("reproduced", "reproduced")
    assert "| the paper's own data (Tables V–XIV) |" in md
    assert "## The paper (HYDRA and DeepLIFT pruning of YOLOv3, seeds/000): the declared rules " \
           f"(version {stats.VERSION})" in md

    # The same input gives the same bytes, figures included.
    again = tmp_path / "again"
    stats.report(paper_csv, again)
    assert _all_files(out) == _all_files(again)

    # Re-running into an existing folder replaces the report's entries and keeps the rest.
    (out / "notes.txt").write_text("mine")
    (out / "tables" / "stale.csv").write_text("old")
    stats.report(paper_csv, out)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "tables" / "stale.csv").exists()
    assert _all_files(again).items() <= _all_files(out).items()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_report_with_adversarial_and_cost_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for s, acc, cost in [("unstructured-deeplift", 0.4, 1.0), ("structured-deeplift", 0.35, 0.5)]:
        for run in (1, 2, 3):
            for r in (0.0, 0.5, 0.9):
                rows.append({"scenario": s, "run": run, "ratio": r,
                             "map": acc * (1 - r) + rng.normal(0, 0.01),
                             "adv_map": 0.5 * acc * (1 - r) + rng.normal(0, 0.01),
                             "latency_ms": 10 * (1 - cost * r) + rng.normal(0, 0.1),
                             "macs": 1e9 * (1 - cost * r), "ap.circle": 0.5, "ap.square": 0.3})
    out = tmp_path / "r"
    result = stats.report(pd.DataFrame(rows), out, std="sample")
    names = {p.name for p in result["figures"]}
    assert "fig3_adversarial.png" in names
    assert (out / "tables" / "structured-deeplift__macs.csv").exists()
    per_class = pd.read_csv(out / "tables" / "structured-deeplift__per_class_ap.csv")
    assert list(per_class["class"]) == ["circle", "square"]
    md = (out / "report.md").read_text()
    assert "std dev (sample)" in md
    assert "adversarial mAP@[.5:.95] (not in the paper)" in md


def test_no_report_is_left_behind_on_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("scenario,run,map\nx,1,0.3\n")
    with pytest.raises(DataError, match=r"bad\.csv lacks column\(s\) ratio"):
        stats.report(bad, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


# ------------------------------------------------------------------------------------- loading

@pytest.mark.parametrize("content, message", [
    ("", r"is empty"),
    ("scenario,run,ratio,map\n", r"has a header but no rows"),
    ("scenario,ratio,map\na,0.5,0.3\n", r"lacks column\(s\) run"),
    ("scenario,run,ratio,map\na,1,50,0.3\n", r"ratio 50, outside \[0, 1\]"),
    ("scenario,run,ratio,map\na,1,0.5,0.3\na,1,0.5,0.4\n", r"more than once"),
    ("scenario,run,ratio,notes\na,1,0.5,x\n", r"no metric column"),
    ("scenario,run,ratio,map\na,one,0.5,0.3\n", r"run 'one'"),
    ("scenario,run,ratio,map\na,1.5,0.5,0.3\n", r"has run 1\.5; runs must be whole"),
    ("scenario,run,ratio,map\na,1,0.5,0.3\na,2,0.5,\"0,31\"\n",
     r"has map 0,31 in data row 2; metrics must be numbers"),
    ("scenario,run,ratio,latency_ms\na,1,0.5,inf\n", r"has latency_ms inf in data row 1; "
                                                     r"metrics must be finite"),
    ("scenario,run,ratio,map,adv_map50\na,1,0.5,0.3,40.9\n",
     r"has adv_map50 40\.9 in data row 1, outside \[0, 1\]; give AP as a fraction"),
    ("scenario,run,ratio,map\na,1,0.5,-0.2\n", r"map -0\.2 in data row 1, outside \[0, 1\]"),
    ("scenario,run,ratio,map,ap.car\na,1,0.5,0.3,1.2\n", r"ap\.car 1\.2 .* outside \[0, 1\]"),
])
def test_bad_results_raise_data_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "results.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as e:
        stats.load_results(path)
    assert str(path) in str(e.value)


def test_an_empty_metric_cell_is_a_metric_not_measured(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("scenario,run,ratio,map,adv_map\na,1,0.5,0.3,\na,2,0.5,0.31,0.1\n")
    df = stats.load_results(path)
    assert df["map"].tolist() == [0.3, 0.31] and np.isnan(df["adv_map"].iloc[0])


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        stats.load_results(tmp_path / "nope.csv")


def test_several_csvs_are_concatenated_and_attributes_inferred(paper: pd.DataFrame,
                                                               tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    paper[paper["scenario"].str.startswith("un")].to_csv(a, index=False)
    paper[paper["scenario"].str.startswith("structured")].to_csv(b, index=False)
    df = stats.load_results([a, b])
    assert len(df) == 450
    grey = df[df["scenario"] == "unstructured-deeplift-grey"].iloc[0]
    assert (grey["granularity"], grey["method"], grey["colour"]) == ("weight", "deeplift", "grey")
    assert stats.infer_attributes("structured-hydra") == {
        "granularity": "filter", "method": "hydra", "colour": "rgb"}
    assert stats.infer_attributes("l1-filter")["method"] == "l1-filter"


# ----------------------------------------------------------------------------------------- CLI

def test_cli_writes_the_report(paper_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["stats", str(paper_csv), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "finding 4: reproduced" in result.stderr
    assert (out / "report.md").exists() and (out / "figures" / "fig1a_map.png").exists()


@pytest.mark.parametrize("study", ["paper", "kitti"])
def test_cli_prints_the_declaration_alone(study: str) -> None:
    from prunekit.stats.verdicts import study as find

    result = CliRunner().invoke(app, ["stats", "--rules", "--study", study])
    assert result.exit_code == 0, result.stderr
    assert f"the declared rules (version {stats.VERSION})" in result.stdout
    for rule in find(study).rules:
        assert f"**{rule.id}. {rule.claim}**" in result.stdout
    assert "| α" not in result.stdout and "Holm" in result.stdout
    both = CliRunner().invoke(app, ["stats", "--rules", "results.csv"])
    assert both.exit_code == 2 and "give no results CSV" in both.stderr



def test_the_report_repeats_byte_for_byte(paper_csv: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The same results.csv gives the same report, tables and figures, byte for byte."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    runs = []
    for _ in range(2):
        out = tmp_path / "report"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        result = CliRunner().invoke(app, ["stats", str(paper_csv), "-o", str(out)])
        assert result.exit_code == 0, result.stderr
        runs.append({str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                     if p.is_file()})
    assert len(runs[0]) > 20 and runs[0].keys() == runs[1].keys()
    assert [k for k in runs[0] if runs[0][k] != runs[1][k]] == []


@pytest.mark.parametrize("content", [None, ""])
def test_cli_bad_input_is_one_line_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "results.csv"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(app, ["stats", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "results.csv" in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()
