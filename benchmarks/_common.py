"""Shared helpers for the benchmarks: timing that reports a median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from prunekit.models.base import Geometry, Target


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


def targets_from_rows(rows: list[list[float]] | torch.Tensor, n: int, size: int) -> list[Target]:
    """Rows of (image, class, x1, y1, x2, y2) in pixels of n square ``size`` images as the
    neutral per-image targets (the images are their own model input)."""
    rows = torch.as_tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return [Target(rows[rows[:, 0] == i, 2:], rows[rows[:, 0] == i, 1].long(),
                   Geometry(size, size)) for i in range(n)]


def report(name: str, ratio: float, limit: float, *, lower_is_better: bool = True,
           detail: str = "") -> bool:
    ok = ratio <= limit if lower_is_better else ratio >= limit
    sign = "<=" if lower_is_better else ">="
    print(f"{name} = {ratio:.3f} (target {sign} {limit:.3f}) {'ok' if ok else 'MISSED'}"
          f"{'  ' + detail if detail else ''}", flush=True)
    return ok
