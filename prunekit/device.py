"""Where and how wide computation runs: ``--device`` and ``--threads``, resolved in one place."""

from __future__ import annotations

import contextlib
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


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU threads (``None`` leaves them as they are)."""
    if threads is None:
        return
    if threads < 1:
        raise PrunekitError(f"--threads must be at least 1, got {threads}")
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
