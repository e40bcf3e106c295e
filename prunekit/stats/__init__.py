"""Statistics and the findings report for an experiment grid (`prunekit stats`).

The input is the grid's long-format results table: one row per scenario × run × pruning ratio,
with columns ``scenario``, ``run``, ``ratio`` (a fraction, 0.75 for 75 %) and metrics (``map``,
``adv_map``, ``latency_ms``, ``macs``, ..., per-class ``ap.<class>``), read and checked by
:mod:`prunekit.stats.loading` (:func:`load_results`). From it this package builds

* per scenario and metric, a runs × ratios table with max, min, avg and std dev rows, laid out
  like the paper's Tables V–XIV (:mod:`prunekit.stats.tables`, :func:`runs_table`);
* one-way ANOVA p-values per ratio for the paper's comparisons (Tables I–IV,
  :mod:`prunekit.stats.tests`, :func:`anova`): every pair of scenarios that differs in exactly
  one of score method, granularity or colour;
* PNG figures with standard-deviation error bars (Fig. 1a/1b, 2a/2b, clean vs adversarial;
  :mod:`prunekit.stats.figures`);
* one verdict per paper finding (:mod:`prunekit.stats.findings`, what any study's findings share,
  and :mod:`prunekit.stats.findings.paper`, the paper's six findings and the rules that judge
  them, :func:`findings`);
* ``report.md``: the input, one verdict per paper finding, the figures, the ANOVA tables and the
  per-scenario tables (:mod:`prunekit.stats.report`, :func:`report`).

Standard deviations are population standard deviations (``ddof=0``) by default, because that is
what the paper's tables hold (Table V, 0 %: the ten runs give 8.0e-04 with ``ddof=0`` and 8.4e-04
with ``ddof=1``); ``std="sample"`` uses ``ddof=1``. The label says which.

The modules import each other one way: loading ← tables ← tests ← figures, findings ← report.
Every public name is re-exported here, so ``from prunekit.stats import report`` and
``stats.anova(...)`` work as they did when this was one module. ``prunekit.stats.figures``,
``prunekit.stats.findings`` and ``prunekit.stats.report`` are therefore the functions of those
names; import from the modules by their full path (``from prunekit.stats.report import ...``).
"""

from __future__ import annotations

from prunekit.stats.figures import (
    figure_clean_vs_adversarial,
    figure_png,
    figure_vs_ratio,
    figures,
)
from prunekit.stats.findings import (
    ALPHA,
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARTLY,
    REPRODUCED,
    VERSION,
    Finding,
    Rule,
)
from prunekit.stats.findings.paper import CLAIMS, RULES, findings
from prunekit.stats.loading import (
    ANOVA_METRICS,
    ATTRIBUTES,
    KEYS,
    LABELS,
    TABLE_METRICS,
    Results,
    infer_attributes,
    load_results,
    metrics_present,
)
from prunekit.stats.report import anova_markdown, report, table_markdown
from prunekit.stats.tables import (
    StdKind,
    per_class_table,
    ratio_label,
    runs_table,
    std_label,
    summary,
)
from prunekit.stats.tests import Anova, Comparison, anova, comparisons, f_oneway_p

__all__ = [
    "ALPHA",
    "ANOVA_METRICS",
    "ATTRIBUTES",
    "CLAIMS",
    "CONTRADICTED",
    "INCONCLUSIVE",
    "KEYS",
    "LABELS",
    "NOT_REPRODUCED",
    "NOT_TESTABLE",
    "PARTLY",
    "REPRODUCED",
    "RULES",
    "VERSION",
    "TABLE_METRICS",
    "Anova",
    "Comparison",
    "Finding",
    "Results",
    "Rule",
    "StdKind",
    "anova",
    "anova_markdown",
    "comparisons",
    "f_oneway_p",
    "figure_clean_vs_adversarial",
    "figure_png",
    "figure_vs_ratio",
    "figures",
    "findings",
    "infer_attributes",
    "load_results",
    "metrics_present",
    "per_class_table",
    "ratio_label",
    "report",
    "runs_table",
    "std_label",
    "summary",
    "table_markdown",
]
