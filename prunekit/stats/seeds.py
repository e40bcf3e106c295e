"""The seeds' own numbers as results tables, for judging them by the same rules as a run.

* :func:`paper_results`: the paper's Tables V–XIV (``data/paper/``, as printed: ten runs × nine
  ratios of mAP and latency for each of the five scenarios, with the paper's max/min/avg/std dev
  rows), as a 450-row table. The paper's mAP is measured at its confidence threshold 0.5, so it
  is the ``map_conf05`` column; the table has no ``map`` (0.001) column.
* :func:`kitti_results`: the second study's own figures (``data/kitti-study.csv``): its
  Deformable DETR (ResNet-50, on KITTI, 800 × 1333) measured straight after L1 filter pruning,
  as its notebook reported them (mAP 0.117 unpruned, 0.092 at 10 %, 0.024 at 20 %, 0 from 30 %;
  204.87 G MACs unpruned and 156.3 G at 50 %; 196 and 189 ms per batch). The study gives no
  per-run numbers and none for weight pruning: rules that need them are not testable on it.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import pandas as pd

from prunekit.stats.tables import ratio_label  # noqa: F401  (re-exported for tests)


def _data(name: str):
    return resources.files("prunekit.stats").joinpath("data", name)


def paper_tables() -> list[tuple[str, str, pd.DataFrame, pd.DataFrame]]:
    """(scenario, metric, the runs as floats indexed ``run k``, the summary rows as printed
    strings) for each of Tables V–XIV."""
    out = []
    for entry in sorted(_data("paper").iterdir(), key=lambda p: p.name):
        if "anova" in entry.name or not entry.name.endswith(".csv"):
            continue
        with entry.open() as f:
            head = f.readline()
            table = pd.read_csv(f, dtype=str).set_index("row")
        scenario = re.search(r"scenario=([\w-]+)", head).group(1)
        metric = re.search(r"metric=(\w+)", head).group(1)
        runs = table[table.index.str.startswith("run ")].astype(float)
        out.append((scenario, metric, runs, table[~table.index.str.startswith("run ")]))
    return out


def paper_anova(name: str) -> pd.DataFrame:
    """One of the paper's Tables I–IV (p-values by comparison and ratio label)."""
    with _data("paper").joinpath(name).open() as f:
        return pd.read_csv(f, comment="#").set_index("comparison")


@cache
def _paper() -> pd.DataFrame:
    cells: dict[tuple, dict] = {}
    for scenario, metric, runs, _ in paper_tables():
        column = "map_conf05" if metric == "map" else metric
        for run, values in runs.iterrows():
            for col, v in values.items():
                key = (scenario, int(run.split()[1]), round(float(col.rstrip("%")) / 100, 6))
                cells.setdefault(key, {})[column] = v
    return pd.DataFrame([{"scenario": s, "run": r, "ratio": q, **m}
                         for (s, r, q), m in sorted(cells.items())])


def paper_results() -> pd.DataFrame:
    """The paper's Tables V–XIV as one long results table (450 rows)."""
    return _paper().copy()


def kitti_results() -> pd.DataFrame:
    """The second study's own figures as a results table (see the module docstring)."""
    with _data("kitti-study.csv").open() as f:
        return pd.read_csv(f, comment="#")
