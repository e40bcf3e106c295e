"""The experiment grid end to end at the smoke scale (slow): report, figures, resume."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import MAKE_ENV, ROOT

pytestmark = pytest.mark.slow


def _make(out, *extra, target="all-scenarios", timeout=1500):
    return subprocess.run(["make", "-C", str(ROOT), target, "SCALE=smoke", f"OUT={out}",
                           *extra], capture_output=True, text=True, env=MAKE_ENV,
                          timeout=timeout)


def _results(out):
    return {p: p.stat().st_mtime_ns for p in out.glob("*/run*/r*/result.json")}


# The smoke grid itself runs once per session (tests/conftest.py: smoke_grid), killed once a few
# cells are done and run again; the Slurm test compares its own run with it.
def test_smoke_grid_writes_the_report_and_resumes(smoke_grid):
    out, finished = smoke_grid
    after = _results(out)
    assert len(after) == 5 * 2 * 3
    for path, mtime in finished.items():  # nothing finished was computed again
        assert after[path] == mtime, path
    assert not list(out.rglob("*.tmp"))

    report = (out / "report" / "report.md").read_text()
    figures = sorted((out / "report" / "figures").glob("*.png"))
    assert len(figures) >= 4
    for fig in figures:
        assert f"figures/{fig.name}" in report
    for scenario in ("unstructured-deeplift", "unstructured-hydra", "structured-deeplift",
                     "structured-hydra", "unstructured-deeplift-grey"):
        assert scenario in report
    assert "ANOVA" in report
    row = json.loads(next(iter(out.glob("structured-deeplift/run1/r0.9/result.json")))
                     .read_text())
    assert row["granularity"] == "filter" and row["ratio"] == 0.9
    base = json.loads((out / "structured-deeplift/run1/r0/result.json").read_text())
    assert row["macs"] < 0.3 * base["macs"]  # structured cells are compacted: really smaller

    again = _make(out, "-q", target="grid-report", timeout=120)
    assert again.returncode == 0  # everything is up to date
    # Every pruned cell knows the time of the step that wrote its scores (finding 9).
    import pandas as pd

    df = pd.read_csv(out / "results.csv")
    assert df.loc[df["ratio"] > 0, "seconds_score"].gt(0).all()
    assert df.loc[df["ratio"] == 0, "seconds_score"].isna().all()


def test_collect_joins_the_step_times(tmp_path):
    from prunekit.errors import PrunekitError
    from prunekit.grid import collect

    for scenario, ratio, source in (("unstructured-deeplift", 0.5, "runs/run1/deeplift-rgb.st"),
                                    ("unstructured-deeplift", 0.0, "runs/run1/robust-rgb.st")):
        cell = tmp_path / scenario / "run1" / f"r{ratio}"
        cell.mkdir(parents=True)
        (cell / "result.json").write_text(json.dumps(
            {"scenario": scenario, "run": 1, "ratio": ratio, "map": 0.5, "source": source}))
    times = tmp_path / "times.log"
    times.write_text("robust runs/run1/robust-rgb.st 90000\n"
                     "deeplift runs/run1/deeplift-rgb.st 12000\n"
                     "deeplift runs/run1/deeplift-rgb.st 12500\n")
    df = collect(tmp_path, times)
    assert df.set_index("ratio")["seconds_score"].to_dict() == pytest.approx(
        {0.0: float("nan"), 0.5: 12.5}, nan_ok=True)
    assert "seconds_score" not in collect(tmp_path).columns
    times.write_text("deeplift runs/run1/deeplift-rgb.st twelve\n")
    with pytest.raises(PrunekitError, match=r"times\.log, line 1: expected 'STAGE TARGET "
                                            r"MILLISECONDS'"):
        collect(tmp_path, times)


@pytest.mark.parametrize("folder", ["s/run2/r0.5", "t/run1/r0.5", "s/run1/r0.75",
                                    "s/runs/r0.5"])
def test_collect_refuses_a_result_in_another_cells_folder(tmp_path, folder):
    """A result.json copied or moved would enter the table as its own cell a second time (or
    under the wrong scenario); its folder must name the cell it holds."""
    from prunekit.errors import PrunekitError
    from prunekit.grid import collect

    result = json.dumps({"scenario": "s", "run": 1, "ratio": 0.5, "map": 0.5})
    for where in ("s/run1/r0.5", folder):
        (tmp_path / where).mkdir(parents=True, exist_ok=True)
        (tmp_path / where / "result.json").write_text(result)
    with pytest.raises(PrunekitError, match=r"holds scenario 's', run 1, ratio 0\.5, not the "
                                            r"cell its folder names"):
        collect(tmp_path)
    (tmp_path / folder / "result.json").unlink()
    assert len(collect(tmp_path)) == 1


def test_collect_names_sources_inside_the_grid_relative_to_it(tmp_path):
    """Two runs of one grid in different folders give equal tables (the Slurm test compares
    them): a source inside the grid is written relative to it, one outside as recorded."""
    from prunekit.grid import collect

    for run, source in ((1, str(tmp_path / "run1" / "hydra-weight-r0.9.st")),
                        (2, "/elsewhere/model.st")):
        cell = tmp_path / "unstructured-hydra" / f"run{run}" / "r0.9"
        cell.mkdir(parents=True)
        (cell / "result.json").write_text(json.dumps(
            {"scenario": "unstructured-hydra", "run": run, "ratio": 0.9, "source": source}))
    assert collect(tmp_path)["source"].tolist() == ["run1/hydra-weight-r0.9.st",
                                                    "/elsewhere/model.st"]
