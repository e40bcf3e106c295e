"""Shared helpers for the benchmarks: timing that reports a median of repeats."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import torch

from prunekit.device import keep_freed_memory
from prunekit.models.base import Geometry, Target

# What the command line does before every command, so that the benchmarks time what it runs.
keep_freed_memory()


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


_ROUND_TRIP = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static _Atomic long flag;
static long n = 100000;
static int cpus[2];
static void pin(int c) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(c, &s);
  pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}
static void* pong(void* unused) {
  pin(cpus[1]);
  for (long i = 0; i < n; ++i) {
    while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 1) {}
    atomic_store_explicit(&flag, 2 * i + 2, memory_order_release);
  }
  return unused;
}
int main(int argc, char** argv) {
  cpus[0] = atoi(argv[1]);
  cpus[1] = atoi(argv[2]);
  pthread_t t;
  pthread_create(&t, 0, pong, 0);
  pin(cpus[0]);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; ++i) {
    atomic_store_explicit(&flag, 2 * i + 1, memory_order_release);
    while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 2) {}
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  pthread_join(t, 0);
  printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
  return 0;
}
"""
@functools.cache
def _round_trip_program() -> str | None:
    """The round-trip program, built once per process into a folder removed at exit; None
    without a C compiler or where it does not build."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    folder = tempfile.mkdtemp(prefix="prunekit-bench-")
    atexit.register(shutil.rmtree, folder, True)
    source, binary = os.path.join(folder, "rt.c"), os.path.join(folder, "rt")
    with open(source, "w") as f:
        f.write(_ROUND_TRIP)
    built = subprocess.run([cc, "-O2", "-pthread", source, "-o", binary], capture_output=True,
                           check=False)
    return binary if built.returncode == 0 else None


def core_round_trip() -> float | None:
    """Nanoseconds for one cache line to go from the first CPU this process may run on to the
    second and back (two threads pinned, 100,000 round trips): where the host put the two
    virtual CPUs. None without a C compiler, Linux's CPU affinity or a second CPU. On the
    two-core AMD EPYC of 2026-12-06 it was either about 80 ns (the two sharing a cache) or
    about 360 ns, for minutes at a time."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux only, as the program's pinning
    cpus = sorted(affinity(0)) if affinity else []
    binary = _round_trip_program() if len(cpus) >= 2 else None
    if binary is None:
        return None
    run = subprocess.run([binary, str(cpus[0]), str(cpus[1])], capture_output=True, text=True,
                         timeout=60, check=False)
    return float(run.stdout) if run.returncode == 0 else None


def cache_read(seconds: float = 0.1, mib: int = 1) -> float:
    """GB/s of summing a ``mib`` MiB buffer over and over for about ``seconds`` (PyTorch's
    threads): a probe of the machine's state that no model changes. With two threads on the
    two-core AMD EPYC of 2026-12-06 it read about 95 GB/s while the cores' round trip
    (:func:`core_round_trip`) was about 80 ns and about 78 GB/s while it was about 360 ns (one
    thread: 71 GB/s either way); the 75 %-compacted yolov3-416 ran 21.4-22.9 ms or mostly
    23-25.7 ms with it, while the dense model's 300 ms barely moved."""
    buffer = torch.rand(mib * 2**18)
    buffer.sum()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        buffer.sum()
        n += 1
    return n * mib * 2**20 / elapsed / 1e9


def machine_state() -> dict[str, float | None]:
    """The probes taken after each round of a latency benchmark."""
    return {"cache read (1 MiB, GB/s)": cache_read(), "core round trip (ns)": core_round_trip()}


def print_rounds(latencies: dict[str, list[float]], probes: list[dict[str, float | None]]
                 ) -> None:
    """Each round's latencies beside the machine's state after it, so that slow rounds can be
    told from a slow machine, and the CPU they ran on (the ratios differ from one to
    another)."""
    from prunekit.device import cpu_info

    info = cpu_info("model name", "cpu family", "model")
    cpu = "unknown" if info is None else (f"{info['model name']} (family {info['cpu family']}, "
                                          f"model {info['model']})")
    print(f"  CPU {cpu}, {os.cpu_count()} logical CPUs")
    print("  per round: " + "; ".join(
        f"{k} " + ", ".join("-" if p[k] is None else f"{p[k]:.0f}" for p in probes)
        for k in probes[0]) + "; " + "; ".join(
        f"{k} {', '.join(f'{v:.1f}' for v in vs)} ms" for k, vs in latencies.items()),
        flush=True)


def print_headroom(title: str, rows: list[tuple[str, float, int]], peak: float, threads: int,
                   limit: float = 0.9) -> None:
    """Each model's MACs a second beside ``peak``, this CPU's float32 matrix product on the same
    threads (:func:`prunekit.bench.matmul_rate`), and what ``limit`` × the MACs reduction asks of
    each smaller model: the rate, and the share of the product's, its pass must reach. ``rows``:
    (label, pass ms, MACs), the dense model first."""
    print(f"-- {title}: MACs a second against this CPU's float32 matrix product (2048², "
          f"{threads} threads, {peak:.1f} G MACs/s)")
    _, dense_ms, dense_macs = rows[0]
    for i, (label, ms, macs) in enumerate(rows):
        rate = macs / ms / 1e6
        line = f"  {label:<10} {macs / 1e9:7.2f} G MACs in {ms:8.2f} ms: {rate:6.1f} G/s " \
               f"({rate / peak:.0%})"
        if i:
            need_ms = dense_ms / (limit * dense_macs / macs)
            need = macs / need_ms / 1e6
            line += f"; {limit:g} x the MACs reduction needs <= {need_ms:.2f} ms: " \
                    f"{need:.1f} G/s ({need / peak:.0%})"
        print(line, flush=True)


def report(name: str, ratio: float, limit: float, *, lower_is_better: bool = True,
           detail: str = "") -> bool:
    ok = ratio <= limit if lower_is_better else ratio >= limit
    sign = "<=" if lower_is_better else ">="
    print(f"{name} = {ratio:.3f} (target {sign} {limit:.3f}) {'ok' if ok else 'MISSED'}"
          f"{'  ' + detail if detail else ''}", flush=True)
    return ok


@functools.cache
def _count_onednn_linears() -> None:
    """FlopCounterMode knows ATen's operators only: without a formula for oneDNN's linear
    (which Deformable DETR's deployed form runs), every linear layer would count 0 MACs and
    its whole time would show as time beyond its MACs."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or op in flop_registry:
        return

    @register_flop_formula(op)
    def _linear_flops(x_shape, w_shape, *args, **kwargs) -> int:
        rows = 1
        for n in x_shape[:-1]:
            rows *= n
        return 2 * rows * w_shape[0] * w_shape[1]


def module_profile(model: torch.nn.Module, x: torch.Tensor, names: list[str], *,
                   runs: int = 5, call=None) -> dict[str, tuple[float, int]]:
    """Median milliseconds and MACs of each named submodule in one forward pass of ``model``
    on ``x`` (eager, inference mode; ``call(model, x)`` runs it, default ``model(x)``).
    Hooks time each module from its first input to its output, children included."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_onednn_linears()
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


def onednn_primitives(step: Callable[[], object], passes: int
                      ) -> list[list[tuple[str, float, int]]]:
    """The oneDNN primitives that ``passes`` calls of ``step`` execute, pass by pass: each
    one's problem (oneDNN's own description, e.g. ``mb1_ic8oc16_ih208oh208kh3...``), its
    execution time in ms and its MACs (convolutions; 0 for the rest). Read from oneDNN's
    verbose log, which goes to the process's standard output: file descriptor 1 is sent to a
    temporary file meanwhile. Every pass must execute the same number of primitives."""
    import ctypes
    import re
    import sys

    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                for _ in range(passes):
                    step()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = [f for f in (line.split(",") for line in log.read().splitlines())
                 if f[0] == "onednn_verbose" and "primitive" in f[1:3] and "exec" in f[2:4]]
    if not lines or len(lines) % passes:
        raise RuntimeError(f"oneDNN logged {len(lines)} primitive executions for {passes} "
                           f"passes: not the same number each pass")
    shape = re.compile(r"mb(\d+)_ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+).*ow(\d+)kw(\d+)")

    def macs(problem: str) -> int:
        m = shape.match(problem)
        if not m:
            return 0
        mb, ic, oc, oh, kh, ow, kw = map(int, m.groups())
        return mb * ic * oc * oh * ow * kh * kw

    rows = [(f[-2], float(f[-1]), macs(f[-2])) for f in lines]
    n = len(rows) // passes
    return [rows[i * n:(i + 1) * n] for i in range(passes)]


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
