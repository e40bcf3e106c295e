"""Reading and checking the grid's long-format results table, and its vocabulary.

:func:`load_results` reads one or more results tables (DataFrames or CSV paths), checks them
(``scenario``, ``run`` and ``ratio`` columns, at least one metric, ratios in [0, 1], no repeated
scenario/run/ratio) and fills in each scenario's granularity, score method and colour from its
name where the table does not give them (:func:`infer_attributes`). The constants here (the key
columns, the metrics that get tables and ANOVA tables, their labels, the spellings and display
names of attribute values) are shared by the rest of :mod:`prunekit.stats`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from prunekit.errors import DataError

Results = pd.DataFrame | str | os.PathLike | Sequence[pd.DataFrame | str | os.PathLike]

KEYS = ("scenario", "run", "ratio")
ATTRIBUTES = ("granularity", "method", "colour")
#: Metrics that get a runs × ratios table, in report order.
TABLE_METRICS = ("map", "map50", "map75", "map_conf05", "adv_map", "adv_map50", "adv_map75",
                 "adv_map_conf05", "latency_ms",
                 "macs", "flops", "params_nonzero", "sparsity", "bytes_stored",
                 "compression_ratio")
#: Metrics that get ANOVA tables (the paper's Tables I–IV, plus adversarial mAP).
ANOVA_METRICS = ("map", "map_conf05", "latency_ms", "adv_map")
_OTHER_METRICS = ("latency_iqr_ms", "params_total", "map50_conf05", "map75_conf05",
                  "adv_map50_conf05", "adv_map75_conf05", "seconds_score")
_PER_CLASS = ("ap", "ap50", "adv_ap", "adv_ap50")

LABELS = {
    "map": "mAP@[.5:.95]", "map50": "mAP@.5", "map75": "mAP@.75",
    "map_conf05": "mAP@[.5:.95] at confidence 0.5",
    "adv_map_conf05": "adversarial mAP@[.5:.95] at confidence 0.5",
    "adv_map": "adversarial mAP@[.5:.95]", "adv_map50": "adversarial mAP@.5",
    "adv_map75": "adversarial mAP@.75", "latency_ms": "latency per image (ms)", "macs": "MACs",
    "flops": "FLOPs", "params_nonzero": "non-zero parameters", "sparsity": "sparsity",
    "bytes_stored": "checkpoint bytes", "compression_ratio": "compression ratio",
}
_METHOD_NAMES = {"deeplift": "DeepLIFT", "hydra": "HYDRA", "magnitude": "magnitude",
                 "l1-filter": "L1-filter", "random": "random", "taylor": "Taylor"}
_GRANULARITY_NAMES = {"weight": "Unstructured", "kernel": "Kernel", "filter": "Structured"}
_COLOUR_NAMES = {"grey": "Greyscale", "rgb": "Colour"}
# Spellings of attribute values in results tables, mapped to the grid's.
_SYNONYMS = {"granularity": {"unstructured": "weight", "structured": "filter",
                             "channel": "filter"},
             "method": {"l1": "l1-filter", "scaled": "hydra"},
             "colour": {"gray": "grey", "greyscale": "grey", "grayscale": "grey",
                        "colour": "rgb", "color": "rgb"}}
# Which level of a factor is named first in a comparison, as in the paper's tables.
_ORDER = {"method": ["deeplift", "hydra", "l1-filter", "magnitude", "taylor", "random"],
          "granularity": ["weight", "kernel", "filter"], "colour": ["grey", "rgb"]}


def load_results(results: Results) -> pd.DataFrame:
    """Read and check one or more results tables and concatenate them.

    Args:
        results: a DataFrame, a CSV path, or a sequence of either.

    Returns:
        The long-format table sorted by scenario, ratio and run, with ``granularity``,
        ``method`` and ``colour`` filled in from the scenario names where absent.

    Raises:
        DataError: a file is missing, empty or unreadable, lacks ``scenario``/``run``/``ratio``
            or any metric, holds a ratio outside [0, 1], or repeats a scenario/run/ratio.
    """
    if isinstance(results, pd.DataFrame | str | os.PathLike):
        results = [results]
    if not results:
        raise DataError("no results given; pass the results CSV written by the experiment grid")
    frames = [_read_one(r).assign(_source=_source_name(r)) for r in results]
    df = pd.concat(frames, ignore_index=True)
    dup = df.duplicated(list(KEYS), keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        same = df[dup & (df["scenario"] == first["scenario"]) & (df["run"] == first["run"])
                  & (df["ratio"] == first["ratio"])]
        where = " and ".join(dict.fromkeys(same["_source"]))
        raise DataError(f"{where} hold(s) scenario {first['scenario']!r}, run {first['run']}, "
                        f"ratio {first['ratio']:g} more than once; remove the repeated rows (or "
                        f"the CSV given twice)")
    df = df.drop(columns="_source")
    for attr in ATTRIBUTES:
        if attr not in df.columns:
            df[attr] = None
    inferred = {s: infer_attributes(s) for s in df["scenario"].unique()}
    for attr in ATTRIBUTES:
        given = df[attr].astype("string").str.strip().str.lower()
        given = given.replace(_SYNONYMS[attr]).replace("", pd.NA)
        guess = df["scenario"].map(lambda s, a=attr: inferred[s][a])
        df[attr] = given.astype(object).where(given.notna(), guess)
    for scenario, sub in df.groupby("scenario"):
        for attr in ATTRIBUTES:
            values = sorted(sub[attr].dropna().astype(str).unique())
            if len(values) > 1:
                raise DataError(f"scenario {scenario!r} mixes {attr} values {values}; give each "
                                f"{attr} its own scenario name")
    return df.sort_values(["scenario", "ratio", "run"], kind="stable").reset_index(drop=True)


def _source_name(source: pd.DataFrame | str | os.PathLike) -> str:
    return "the results table" if isinstance(source, pd.DataFrame) else str(source)


def _read_one(source: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    name = _source_name(source)
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"{name}: no such file; give the results CSV written by the "
                            f"experiment grid (make all-scenarios)")
        if path.is_dir():
            raise DataError(f"{name} is a folder; give the results CSV inside it")
        try:
            df = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise DataError(f"{name} is empty; give a results CSV with a header line "
                            f"(scenario,run,ratio,map,...) and one row per run") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise DataError(f"{name} is not a readable CSV ({str(e).splitlines()[0]}); give "
                            f"the results CSV written by the experiment grid") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [k for k in KEYS if k not in df.columns]
    if missing:
        raise DataError(f"{name} lacks column(s) {', '.join(missing)}; a results table needs "
                        f"scenario, run and ratio columns plus at least one metric (map, "
                        f"latency_ms, ...)")
    if df.empty:
        raise DataError(f"{name} has a header but no rows; run the experiment grid first")
    metrics = [c for c in df.columns if _is_metric(c)]
    for c in metrics:
        df[c] = _metric_values(name, df, c)
    if not any(df[c].notna().any() for c in metrics):
        raise DataError(f"{name} has no metric column with numbers; expected some of "
                        f"{', '.join(TABLE_METRICS)}")
    if df["scenario"].isna().any():
        raise DataError(f"{name} has rows without a scenario; fill in the scenario column")
    df["scenario"] = df["scenario"].astype(str).str.strip()
    run = pd.to_numeric(df["run"], errors="coerce")
    if run.isna().any() or (run != run.round()).any():
        bad = df["run"][run.isna() | (run != run.round())].iloc[0]
        shown = f"{bad:g}" if isinstance(bad, (int, float)) else repr(bad)
        raise DataError(f"{name} has run {shown}; runs must be whole numbers (1, 2, ...)")
    df["run"] = run.astype(int)
    ratio = pd.to_numeric(df["ratio"], errors="coerce")
    if ratio.isna().any():
        bad = df["ratio"][ratio.isna()].iloc[0]
        raise DataError(f"{name} has ratio {bad!r}; ratios must be numbers")
    if ((ratio < 0) | (ratio > 1)).any():
        bad = ratio[(ratio < 0) | (ratio > 1)].iloc[0]
        raise DataError(f"{name} has ratio {bad:g}, outside [0, 1]; give ratios as fractions "
                        f"(75 % is 0.75)")
    # Ratios computed as 1 - k/n arrive with float noise; rounding lets them group together.
    df["ratio"] = ratio.astype(float).round(6)
    return df


def _metric_values(name: str, df: pd.DataFrame, column: str) -> pd.Series:
    """``column`` as numbers: an empty cell is a metric not measured (NaN); text, an infinite
    value, or an AP outside [0, 1] is a damaged table, refused with the row it is in."""
    values = pd.to_numeric(df[column], errors="coerce")
    checks = [(values.isna() & df[column].notna(), "; metrics must be numbers (leave the cell "
                                                    "empty where it was not measured)"),
              (np.isinf(values), "; metrics must be finite")]
    if _is_precision(column):
        checks.append(((values < 0) | (values > 1), ", outside [0, 1]; give AP as a fraction "
                                                    "(40.9 % is 0.409)"))
    for bad, why in checks:
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise DataError(f"{name} has {column} {df[column].iloc[row]!s} in data row "
                            f"{row + 1}{why}")
    return values


def _is_precision(column: str) -> bool:
    """mAP columns and per-class AP: fractions in [0, 1] (evaluate writes no -1)."""
    return (column.startswith(("map", "adv_map"))
            or any(column.startswith(f"{p}.") for p in _PER_CLASS))


def _is_metric(column: str) -> bool:
    return (column in TABLE_METRICS or column in _OTHER_METRICS
            or any(column.startswith(f"{p}.") for p in _PER_CLASS))


def infer_attributes(scenario: str) -> dict[str, str | None]:
    """Granularity, score method and colour read from a scenario name such as
    ``unstructured-deeplift-grey``; ``None`` where the name does not say."""
    name = scenario.lower()
    tokens = set(re.split(r"[^a-z0-9]+", name))
    granularity = None
    if tokens & {"unstructured", "weight"}:
        granularity = "weight"
    elif tokens & {"structured", "filter", "channel"}:
        granularity = "filter"
    elif "kernel" in tokens:
        granularity = "kernel"
    method = None
    if "l1" in tokens:
        method = "l1-filter"
    else:
        method = next((m for m in _METHOD_NAMES if m in tokens), None)
    colour = "grey" if tokens & {"grey", "gray", "greyscale", "grayscale"} else "rgb"
    return {"granularity": granularity, "method": method, "colour": colour}


def metrics_present(df: pd.DataFrame, candidates: Sequence[str] = TABLE_METRICS) -> list[str]:
    """The candidate metrics that have at least one number in ``df``, in the given order."""
    return [m for m in candidates if m in df.columns and df[m].notna().any()]
