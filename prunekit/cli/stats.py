"""`prunekit stats`: tables, ANOVA, figures and the findings report for a results table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from prunekit.cli._app import app
from prunekit.cli._io import console

EXAMPLE = """Examples:

  prunekit stats results.csv -o report/

  prunekit stats grid-a.csv grid-b.csv -o report/ --std sample

  prunekit stats runs/kitti-study/results.csv --study kitti -o runs/kitti-study/report

  prunekit stats runs/schedule-study/results.csv --study schedule -o runs/schedule-study/report

  prunekit stats --rules --study kitti > rules.md
"""


@app.command("stats", epilog=EXAMPLE)
def stats_cmd(
    results: Annotated[list[Path] | None, typer.Argument(
        help="Results CSV(s) from the experiment grid (scenario, run, ratio, metrics...); "
             "several are concatenated.", show_default=False)] = None,
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Report folder: report.md, findings.json, tables/, anova/, "
        "figures/ (those entries are replaced, other files kept).")] = Path("report"),
    std: Annotated[Literal["population", "sample"], typer.Option(
        "--std", help="Standard deviation over runs: population (ddof=0, as the paper's "
        "tables) or sample (ddof=1).")] = "population",
    study: Annotated[Literal["paper", "kitti", "schedule"], typer.Option(
        "--study", help="Whose findings to judge: paper (the first study, `make "
        "all-scenarios`), kitti (the second, `make kitti-study`) or schedule (`make "
        "schedule-study`).")] = "paper",
    rules: Annotated[bool, typer.Option(
        "--rules", help="Print the study's declared rules (the claims, tests, margins and "
        "verdicts, with their version and calibration) as markdown, and nothing else.")] = False,
) -> None:
    """Per-scenario tables, tests, plots and a verdict on each of a study's findings."""
    if rules:
        from prunekit.stats.verdicts import rules_markdown
        from prunekit.stats.verdicts import study as find_study

        if results:
            raise typer.BadParameter("--rules prints the declaration alone; give no results "
                                     "CSV with it")
        typer.echo(rules_markdown(find_study(study)), nl=False)
        return
    if not results:
        raise typer.BadParameter("give the results CSV(s) to judge (or --rules for the "
                                 "declaration alone)")
    if study == "kitti":
        from prunekit.stats.kitti import report
    elif study == "schedule":
        from prunekit.stats.schedule import report
    else:
        from prunekit.stats import report

    with console.status("computing statistics", spinner="dots"):
        result = report(results, output, std=std)
    console.print(f"wrote {result['report']} ({len(result['tables'])} table files, "
                  f"{len(result['figures'])} figures)", highlight=False)
    for f in result["findings"]:
        console.print(f"finding {f['id']}: {f['verdict']}", highlight=False)
