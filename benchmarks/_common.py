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


def cache_read(seconds: float = 0.1, mib: int = 1) -> float:
    """GB/s of summing a ``mib`` MiB buffer over and over for about ``seconds`` (PyTorch's
    threads): a probe of the machine's state that no model changes. On the two-core AMD EPYC
    of 2026-12-06 it read about 93 GB/s or about 77 GB/s, by the minute; the 75 %-compacted
    yolov3-416, whose work stays in the cores' caches, ran 21.9 ms or 23.5 ms with it, while
    the dense model's 300 ms barely moved."""
    buffer = torch.rand(mib * 2**18)
    buffer.sum()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        buffer.sum()
        n += 1
    return n * mib * 2**20 / elapsed / 1e9


def print_rounds(latencies: dict[str, list[float]], probes: list[float]) -> None:
    """Each round's latencies beside the cache-read probe taken after it, so that slow rounds
    can be told from a slow machine."""
    print(f"  per round: cache read (1 MiB) {', '.join(f'{p:.0f}' for p in probes)} GB/s; "
          + "; ".join(f"{k} {', '.join(f'{v:.1f}' for v in vs)} ms"
                      for k, vs in latencies.items()), flush=True)


def report(name: str, ratio: float, limit: float, *, lower_is_better: bool = True,
           detail: str = "") -> bool:
    ok = ratio <= limit if lower_is_better else ratio >= limit
    sign = "<=" if lower_is_better else ">="
    print(f"{name} = {ratio:.3f} (target {sign} {limit:.3f}) {'ok' if ok else 'MISSED'}"
          f"{'  ' + detail if detail else ''}", flush=True)
    return ok


def module_profile(model: torch.nn.Module, x: torch.Tensor, names: list[str], *,
                   runs: int = 5, call=None) -> dict[str, tuple[float, int]]:
    """Median milliseconds and MACs of each named submodule in one forward pass of ``model``
    on ``x`` (eager, inference mode; ``call(model, x)`` runs it, default ``model(x)``).
    Hooks time each module from its first input to its output, children included."""
    from torch.utils.flop_counter import FlopCounterMode

    call = call or (lambda m, t: m(t))
    modules = dict(model.named_modules())
    times: dict[str, list[float]] = {n: [] for n in names}
    starts: dict[str, float] = {}
    hooks = []
    for n in names:
        m = modules[n]
        hooks.append(m.register_forward_pre_hook(
            lambda mod, inp, n=n: starts.__setitem__(n, time.perf_counter())))
        hooks.append(m.register_forward_hook(
            lambda mod, inp, out, n=n: times[n].append(time.perf_counter() - starts[n])))
    with torch.inference_mode():
        for _ in range(2):
            call(model, x)
        for v in times.values():
            v.clear()
        for _ in range(runs):
            call(model, x)
    for h in hooks:
        h.remove()
    # FlopCounterMode's module tracker hooks the gradients of inputs that require them, and
    # fails on a parameter a module takes as its input (Deformable DETR's query embeddings):
    # counted with every parameter frozen, as inference runs.
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            call(model, x)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    flops = counter.get_flop_counts()  # keyed by path under the root's class name
    root = type(model).__name__
    return {n: (statistics.median(times[n]) * 1e3 if times[n] else 0.0,
                int(sum(flops.get(f"{root}.{n}", {}).values()) // 2)) for n in names}


def print_excess(dense: dict[str, tuple[float, int]], small: dict[str, tuple[float, int]],
                 top: int = 15) -> None:
    """Where the compacted model's time goes beyond its MACs: per module, its time minus the
    dense module's time scaled by the MACs ratio (the time it would take if every MAC saved
    saved its share of time), largest first."""
    rows = []
    for n, (t_small, m_small) in small.items():
        t_dense, m_dense = dense[n]
        ideal = t_dense * (m_small / m_dense) if m_dense else 0.0
        rows.append((t_small - ideal, n, t_dense, t_small, m_dense, m_small))
    rows.sort(reverse=True)
    total_small = sum(r[3] for r in rows)
    print(f"{'module':<40} {'dense ms':>9} {'compact ms':>10} {'MACs x':>7} {'excess ms':>9}")
    for excess, n, t_dense, t_small, m_dense, m_small in rows[:top]:
        ratio = f"{m_dense / m_small:.1f}" if m_small else "-"
        print(f"{n:<40} {t_dense:9.3f} {t_small:10.3f} {ratio:>7} {excess:9.3f}")
    print(f"excess in all {len(rows)} modules: {sum(r[0] for r in rows):.2f} ms of "
          f"{total_small:.2f} ms", flush=True)
