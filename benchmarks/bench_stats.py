"""How long does judging a paper-scale results table take? (target: under 5 s)

The paper's own Tables V–XIV as one 450-row table (5 scenarios × 9 ratios × 10 runs), judged by
every declared rule of the first study with the evidence and the metrics judged beside each,
and by the same rules on the paper's data (what a report does); and the whole `prunekit stats`
report (tables, ANOVA, figures, findings) for scale. The time is the median of repeats in one
process, after a warm-up (imports and the seeds' cached verdicts are not counted).
"""

from __future__ import annotations

import sys
import tempfile

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import median_seconds, report  # noqa: E402

from prunekit.stats.findings.paper import findings  # noqa: E402
from prunekit.stats.loading import load_results  # noqa: E402
from prunekit.stats.report import report as write_report  # noqa: E402
from prunekit.stats.seeds import paper_results  # noqa: E402


def main() -> bool:
    table = paper_results()
    judge = median_seconds(lambda: findings(load_results(table)), repeats=5)
    with tempfile.TemporaryDirectory() as tmp:
        whole = median_seconds(lambda: write_report(table, f"{tmp}/report"), repeats=3)
    print(f"{len(table)} rows; the whole report (tables, ANOVA, figures, findings): "
          f"{whole:.2f} s (median)")
    return report("seconds to judge a 450-row table, every rule", judge, 5.0)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
