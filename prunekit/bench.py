"""Measure a checkpoint: parameters, sparsity, MACs/FLOPs, bytes, latency and throughput.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (2 per multiply–accumulate of
convolutions and matrix products; BatchNorm, biases and activations are not counted), so ``macs``
is ``flops / 2``. These are the dense counts of the model as it runs: an unstructured mask zeroes
weights but a dense convolution still multiplies by them, so only compaction lowers ``macs``
(``macs_nonzero`` counts the multiply–accumulates with a non-zero weight, the work a sparse kernel
would do). Latency uses :class:`torch.utils.benchmark.Timer` with an explicit thread count,
warm-up runs first, CUDA synchronisation, and reports the median and inter-quartile range. Every
model is timed in the form a deployment runs it, the same for dense, masked and compacted
models: BatchNorm folded into its conv and LeakyReLU in place
(:func:`prunekit.models.yolov3.fuse_for_inference`), channels-last on CPU.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError


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


def count_macs(model: nn.Module, img_size: int, batch: int = 1) -> tuple[int, int]:
    """Dense MACs per batch, and MACs whose weight is non-zero, for one forward pass."""
    param = next(model.parameters())
    x = torch.zeros(batch, 3, img_size, img_size, device=param.device, dtype=param.dtype)
    nonzero = 0
    hooks = []

    def _hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal nonzero
        w = mod.weight
        per_out = (w != 0).reshape(w.shape[0], -1).sum(1).to(torch.float64)
        if isinstance(mod, nn.Conv2d):
            nonzero += int(per_out.sum().item() * out.shape[0] * out.shape[2] * out.shape[3])
        else:
            nonzero += int(per_out.sum().item() * out.numel() // out.shape[-1])

    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            hooks.append(m.register_forward_hook(_hook))
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return counter.get_total_flops() // 2, nonzero


def _latency(model: nn.Module, x: torch.Tensor, threads: int, min_run_time: float) \
        -> tuple[float, float]:
    def step() -> None:
        with torch.inference_mode():
            model(x)

    for _ in range(3):  # warm-up: allocator, kernels, oneDNN primitive caches
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return m.median, m.iqr


def bench(ck: Checkpoint, *, device: str = "cpu", batch: int = 1, threads: int | None = None,
          latency: bool = True, min_run_time: float = 2.0) -> dict[str, Any]:
    """Measure a checkpoint.

    Args:
        ck: the checkpoint (its ``stored_bytes`` is reported as ``bytes_stored``).
        device: ``cpu``, ``cuda`` or ``auto``.
        batch: images per forward pass for latency and throughput.
        threads: CPU threads for the timed runs (default: torch's current setting).
        latency: time the model; ``False`` reports only the static figures.
        min_run_time: seconds of timed runs to collect.

    Returns:
        The figures, JSON-serialisable.
    """
    if batch < 1:
        raise PrunekitError(f"--batch must be at least 1, got {batch}")
    threads = threads or torch.get_num_threads()
    if threads < 1:
        raise PrunekitError(f"--threads must be at least 1, got {threads}")
    dev = resolve_device(device)
    model = ck.build()
    img = int(ck.input["size"])
    params = [p for p in model.parameters()]
    total = sum(p.numel() for p in params)
    nonzero = sum(int((p != 0).sum()) for p in params)
    dense_bytes = sum(t.numel() * 4 for t in ck.state.values() if t.is_floating_point())
    macs, macs_nonzero = count_macs(model, img)
    stored = ck.stored_bytes
    result: dict[str, Any] = {
        "arch": ck.arch.get("name"),
        "params_total": total,
        "params_nonzero": nonzero,
        "sparsity": 1 - nonzero / total if total else 0.0,
        "macs": macs,
        "macs_nonzero": macs_nonzero,
        "flops": 2 * macs,
        "bytes_stored": stored,
        "bytes_dense": dense_bytes,
        "compression_ratio": dense_bytes / stored if stored else None,
        "latency_ms": None,
        "latency_iqr_ms": None,
        "throughput": None,
        "device": dev.type,
        "threads": threads,
        "batch": batch,
        "img_size": img,
        "torch": torch.__version__,
    }
    if latency:
        from prunekit.models.yolov3 import fuse_for_inference

        model = fuse_for_inference(model).to(dev)
        x = torch.rand(batch, 3, img, img, device=dev)
        if dev.type == "cpu":
            # channels-last lets oneDNN pick its fastest convolution layout on CPU.
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        with _threads(threads):
            median, iqr = _latency(model, x, threads, min_run_time)
        result.update(latency_ms=median * 1e3, latency_iqr_ms=iqr * 1e3,
                      throughput=batch / median)
    return result


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
