"""Where and how wide computation runs: ``--device`` and ``--threads``, resolved in one place."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import torch

from prunekit.errors import PrunekitError


def cpu_info(*keys: str) -> dict[str, str] | None:
    """The first line of each ``/proc/cpuinfo`` field in ``keys`` (``model name``, ``flags``),
    its value stripped; ``""`` for a field the CPU does not list, ``None`` without a
    ``/proc/cpuinfo`` (not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    fields = [(name.strip(), value.strip()) for name, _, value in
              (x.partition(":") for x in lines if ":" in x)]
    # The whole field name, not a prefix: ``model`` is not ``model name``.
    return {key: next((v for name, v in fields if name == key), "") for key in keys}


#: The x86 instructions that multiply and add 8-bit pairs into 32 bits in one step, so that
#: onnxruntime's uint8 × int8 kernels neither saturate nor need a second instruction.
INT8_DOT_PRODUCTS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_dot_products() -> list[str] | None:
    """This CPU's 8-bit dot-product instructions (:data:`INT8_DOT_PRODUCTS`, ``[]`` for none);
    ``None`` where that is not known (no ``/proc/cpuinfo``, or not x86)."""
    info = cpu_info("flags")
    flags = set(info["flags"].split()) if info is not None else set()
    if not flags & {"sse2", "avx2"}:
        return None
    return [f for f in INT8_DOT_PRODUCTS if f in flags]


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PrunekitError("--device cuda asked for, but this machine has no CUDA GPU; use "
                            "--device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise PrunekitError(f"--device {device!r} is unknown; use auto, cpu or cuda")
    return torch.device(device)


def check_threads(threads: int | None, *, timed: bool = False) -> None:
    """Refuse ``--threads`` under 1 and, where the run times something (``timed``), more
    threads than the CPUs this process may run on: the times would be of an oversubscribed
    machine, not of the setting asked for."""
    if threads is None:
        return
    if threads < 1:
        raise PrunekitError(f"--threads must be at least 1, got {threads}")
    if not timed:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus and threads > cpus:
        raise PrunekitError(f"--threads {threads} is more than the {cpus} CPUs this process may "
                            f"run on, so the times would be of an oversubscribed machine; give "
                            f"--threads {cpus} or fewer")


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU threads (``None`` leaves them as they are)."""
    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's CPU threads set to ``n`` for the block, as they were after it."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


#: glibc's ``mallopt`` parameters (``<malloc.h>``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from (and go back to) the heap; free heap memory above it is
#: returned to the system.
KEPT_BLOCK_BYTES = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's ``malloc`` keep freed blocks of up to :data:`KEPT_BLOCK_BYTES` for reuse
    instead of unmapping them; ``True`` where it applied (a glibc process), ``False``
    elsewhere. Once for the process: prunekit's command line does it before every command,
    and its benchmarks on import, so that what they time is what the command line runs.

    glibc serves a block of 32 MiB or more (its largest dynamic threshold) with a fresh
    ``mmap`` and unmaps it when freed, so each such tensor is page-faulted in again on every
    forward pass, about 12 ms per 40 MB on the Intel Xeon below. The dense reference
    Deformable DETR writes six of them an image (each encoder feed-forward's 9,792 × 1,024
    activations) and paid 72 ms of 920 for it (two threads, Intel Xeon, 2026-12-06), the one
    filter-pruned at 50 %, whose activations are under 32 MiB, 9 ms: a handicap of the dense
    model's, not a gain of pruning's, so every timing runs with it removed. The cost is
    memory: the process keeps what it freed, up to its peak."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, KEPT_BLOCK_BYTES)) \
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, KEPT_BLOCK_BYTES))
    except (OSError, AttributeError):
        return False
