"""Shared helpers for the benchmarks: timing that reports a median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report(name: str, ratio: float, limit: float, *, lower_is_better: bool = True,
           detail: str = "") -> bool:
    ok = ratio <= limit if lower_is_better else ratio >= limit
    sign = "<=" if lower_is_better else ">="
    print(f"{name} = {ratio:.3f} (target {sign} {limit:.3f}) {'ok' if ok else 'MISSED'}"
          f"{'  ' + detail if detail else ''}", flush=True)
    return ok
