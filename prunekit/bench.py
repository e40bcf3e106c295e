"""Measure a checkpoint: parameters, sparsity, MACs/FLOPs, bytes, latency and throughput.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (2 per multiply–accumulate of
convolutions and matrix products; BatchNorm, biases and activations are not counted), so ``macs``
is ``flops / 2``. These are the dense counts of the model as it runs: an unstructured mask zeroes
weights but a dense convolution still multiplies by them, so only compaction lowers ``macs``
(``macs_nonzero`` counts the multiply–accumulates with a non-zero weight, the work a sparse kernel
would do). They count the model's own arithmetic: a family's deployed form may reach the same
outputs with fewer (Deformable DETR's decoder projects its samples rather than every encoder
position), as many fewer in a pruned model as in the dense one. Latency uses
:class:`torch.utils.benchmark.Timer` with an explicit thread count, warm-up runs first, CUDA
synchronisation, and reports the median and inter-quartile range.

Every model is timed in the form a deployment runs it, the same for dense, masked and compacted
models: its family's deployment form (:meth:`~prunekit.models.base.Detector.deployed`: BatchNorm
folded into the conv before it), then one of two runtimes (``runtime``, reported in the
figures):

- ``onednn-graph`` (the CPU default): the model traced and frozen with TorchScript, with PyTorch's
  oneDNN Graph fuser on (:func:`torch.jit.enable_onednn_fusion`). Each conv runs as one oneDNN
  kernel with its bias, LeakyReLU and residual addition applied as post-ops, and the image,
  activations and head outputs are all channels-last, the layout oneDNN computes in. This is
  how a CPU deployment avoids the extra passes over every activation that separate LeakyReLU
  and addition kernels make. Those passes shrink with the channel count but not with its
  square, so they would hide part of what pruning saves (eager yolov3-416: about 35 of 225 ms
  dense).
- ``eager``: PyTorch eager mode, LeakyReLU in place, channels-last on CPU (oneDNN picks its
  fastest convolution layout); the only runtime on CUDA.
- ``onnxruntime`` (CPU, chosen explicitly): the file ``prunekit export -o model.onnx`` writes
  (:mod:`prunekit.onnx`: the same deployment form, exported with a fixed batch), run by an
  onnxruntime session on the CPU execution provider with ``threads`` intra-op threads,
  sequential execution and full graph optimisation: what a deployment outside PyTorch runs.

An exported file (``bench model.onnx``, float or INT8) is timed in that same onnxruntime
session, as it was written (its batch, its precision), and reports the same fields, so
``bench model.st`` and ``bench model.onnx`` compare in one table: its parameters as recorded at
export, the MACs of its architecture, its own size in ``bytes_stored`` and its ``precision``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from prunekit.checkpoint import Checkpoint
from prunekit.device import check_threads, resolve_device
from prunekit.device import threads as _threads
from prunekit.errors import PrunekitError
from prunekit.models.base import Detector
from prunekit.onnxfile import OnnxDetector, OnnxFile


def count_macs(model: Detector, batch: int = 1) -> tuple[int, int, int, str]:
    """MACs of one forward pass at the model's input size.

    Returns:
        Dense MACs per batch; MACs whose weight is non-zero (dense minus those of zero conv and
        linear weights); the MACs added by the family's formula for what ``FlopCounterMode``
        cannot see (both totals include them); and what those are.
    """
    param = next(model.parameters())
    x = torch.zeros(batch, *model.input_shape, device=param.device, dtype=param.dtype)
    zeroed = 0
    hooks = []

    def _hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal zeroed
        w = mod.weight
        per_out = (w == 0).reshape(w.shape[0], -1).sum(1).to(torch.float64)
        positions = out.shape[0] * out.shape[2] * out.shape[3] if isinstance(mod, nn.Conv2d) \
            else out.numel() // out.shape[-1]
        zeroed += int(per_out.sum().item() * positions)

    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            hooks.append(m.register_forward_hook(_hook))
    try:
        # With autograd on (no backward): FlopCounterMode failed on Deformable DETR under
        # no_grad ("Expected gradient function to be set").
        with FlopCounterMode(display=False) as counter, torch.enable_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    extra, what = model.uncounted_macs(x)
    dense = counter.get_total_flops() // 2 + extra
    return dense, dense - zeroed, extra, what


RUNTIMES = ("auto", "onednn-graph", "eager", "onnxruntime")


def resolve_runtime(runtime: str, device: torch.device,
                    supported: tuple[str, ...] = ("onednn-graph", "eager", "onnxruntime")) -> str:
    """``auto`` → the first PyTorch runtime of ``supported`` (a model's ``runtimes``) this
    device has: ``onednn-graph`` on CPU when PyTorch has oneDNN, else ``eager``
    (``onnxruntime`` only when asked for)."""
    if runtime not in RUNTIMES:
        raise PrunekitError(f"--runtime {runtime!r} is unknown; use {', '.join(RUNTIMES)}")
    cpu_graph = (device.type == "cpu" and torch.backends.mkldnn.is_available()
                 and hasattr(torch.jit, "enable_onednn_fusion"))
    if runtime == "auto":
        return next(r for r in supported if r == "eager" or (r == "onednn-graph" and cpu_graph))
    if runtime == "onnxruntime" and device.type != "cpu":
        raise PrunekitError(f"--runtime onnxruntime runs on the CPU here (the onnxruntime "
                            f"package has no {device.type} provider); use --device cpu, or "
                            f"--runtime eager")
    if runtime not in supported:
        raise PrunekitError(f"--runtime {runtime} cannot run this model; it runs in "
                            f"{', '.join(supported)}")
    if runtime == "onednn-graph" and not cpu_graph:
        raise PrunekitError(f"--runtime onednn-graph needs a CPU with PyTorch's oneDNN; this is "
                            f"{device.type}; use --runtime eager")
    return runtime


@contextlib.contextmanager
def onednn_fusion():
    """PyTorch's oneDNN Graph fuser on for the block, as it was after. The fuser rewrites a
    TorchScript graph when the profiling executor optimises it (on its second or third run), so
    the warm-up runs must be inside the block."""
    old = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(old)


def inference_form(model: Detector, x: torch.Tensor, runtime: str) -> tuple[nn.Module,
                                                                             torch.Tensor]:
    """The model and input as ``runtime`` runs them: the family's deployment form, then eager
    (channels-last on CPU) or a frozen TorchScript trace for the oneDNN Graph fuser. Same
    outputs to float rounding; call the ``onednn-graph`` form inside :func:`onednn_fusion`."""
    model = model.deployed(runtime).to(x.device)
    if runtime == "onednn-graph":
        # Channels-last input, so the profiled strides are channels-last throughout: the first
        # conv reads the image and the head convs write their outputs in the layout oneDNN
        # computes in. With NCHW input, oneDNN converts the image on the way in and the three
        # head outputs on the way out, a fixed 0.4 ms per image that pruning cannot shrink
        # (3 % of yolov3-416 compacted at 75 %).
        model, x = model.to(memory_format=torch.channels_last), _channels_last(x)
        # TracerWarning: the trace is for the one input shape being timed, so the shape
        # arithmetic it records as constants is right. FutureWarning: TorchScript is deprecated
        # for torch.compile, kept here because on CPU torch.compile (inductor, freezing) ran
        # yolov3-416 compacted at 75 % in 17.3-18.4 ms against 15.5 ms for this runtime
        # (NCHW input then; 14.2-15.0 ms channels-last).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", r".*torch\.jit\.\w+` is deprecated", FutureWarning)
            return torch.jit.freeze(torch.jit.trace(model, x, check_trace=False)), x
    if x.device.type == "cpu":
        # channels-last lets oneDNN pick its fastest convolution layout on CPU.
        return model.to(memory_format=torch.channels_last), _channels_last(x)
    return model, x


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _onnxruntime_step(model: Detector | OnnxDetector, x: torch.Tensor, threads: int) -> Any:
    """One forward pass of ``model``'s ONNX export on ``x`` in an onnxruntime session, or of
    the exported file itself (an :class:`~prunekit.onnxfile.OnnxDetector`)."""
    from prunekit import onnx

    if isinstance(model, OnnxDetector):
        session, feeds = model.session(threads), model.feeds(x)
        return lambda: session.run(None, feeds)
    exported = onnx.export(model, batch=x.shape[0], verify=False)
    session = onnx.session(exported.data, threads=threads)
    # The images, and the family's neutral value for any other input (as the PyTorch runtimes
    # run the model, without geometries).
    feeds = {name: t.cpu().numpy() for name, t in
             zip(exported.graph.inputs, model.neutral_inputs(x.cpu()), strict=True)}
    return lambda: session.run(None, feeds)


class Latency:
    """A model prepared for a runtime and warmed up once, then timed as often as wanted.

    Preparation (tracing, fusion, oneDNN primitive creation) happens here, once; each
    :meth:`measure` is a ``torch.utils.benchmark`` median over ``min_run_time`` seconds. Timing
    several models in turn, round after round, spreads a slow spell of a shared machine over
    all of them instead of one side of a ratio.

    oneDNN Graph cannot compile some degenerate layers (a 1-channel 1×1 conv feeding a
    1-channel 3×3 one, as 99 % filter pruning of a small model leaves: "could not create a
    primitive descriptor for the reorder primitive"); with ``fallback`` such a model runs in
    eager mode instead, ``runtime`` says so and ``fallback_reason`` says why.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, runtime: str, *, threads: int,
                 fallback: bool = True) -> None:
        self.threads = threads
        self.runtime = runtime
        self.fallback_reason: str | None = None
        try:
            self._prepare(model, x)
        except RuntimeError as e:
            if runtime != "onednn-graph":
                raise
            why = f"oneDNN Graph cannot run this model: {str(e).strip().splitlines()[-1]}"
            if not fallback:
                raise PrunekitError(f"{why}; use --runtime eager") from e
            self.fallback_reason, self.runtime = why, "eager"
            self._prepare(model, x)

    def _prepare(self, model: nn.Module, x: torch.Tensor) -> None:
        with self._context():
            if self.runtime == "onnxruntime":
                self._step = _onnxruntime_step(model, x, self.threads)
                self._x = x
            else:
                self._model, self._x = inference_form(model, x, self.runtime)
            self._warm_up()

    @contextlib.contextmanager
    def _context(self):
        fusion = onednn_fusion() if self.runtime == "onednn-graph" else contextlib.nullcontext()
        with _threads(self.threads), fusion:
            yield

    def _step(self) -> None:  # replaced by the onnxruntime session's run for that runtime
        with torch.inference_mode():
            self._model(self._x)

    def _warm_up(self) -> None:
        # Allocator, kernels, oneDNN primitive caches, and the TorchScript profiling
        # executor's runs before it optimises (and fuses) the graph.
        for _ in range(5):
            self._step()
        if self._x.is_cuda:
            torch.cuda.synchronize()

    def step_in_context(self) -> None:
        """One forward pass as :meth:`measure` times it: its threads, its runtime's context."""
        with self._context():
            self._step()

    def measure(self, min_run_time: float) -> tuple[float, float]:
        """(median, inter-quartile range) of one forward pass, in seconds."""
        timer = benchmark.Timer(stmt="step()", globals={"step": self._step},
                                num_threads=self.threads)
        with self._context():
            m = timer.blocked_autorange(min_run_time=min_run_time)
        return m.median, m.iqr


def matmul_rate(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """G multiply–accumulates a second of one float32 ``size`` × ``size`` matrix product on the
    CPU with ``threads`` threads (the mean of ``repeats`` after one unmeasured): about the most a
    float32 model's MACs can run at here, to read a model's own rate against. At 2048 on two
    cores of an Intel Xeon with AVX-512 (2026-12-06) it was 165-168, and a 256 → 256 3 × 3
    convolution at 52² 165. PyTorch's thread count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        out = torch.empty(size, size)
        timer = benchmark.Timer(stmt="torch.mm(a, b, out=out)",
                                globals={"torch": torch, "a": a, "b": b, "out": out},
                                num_threads=threads)
        timer.timeit(1)
        seconds = timer.timeit(repeats).median
    finally:
        torch.set_num_threads(before)
    return size ** 3 / seconds / 1e9


def resolve_file_runtime(file: OnnxFile, runtime: str, device: torch.device) -> str:
    """The runtime of an exported file: onnxruntime (CPU), for ``auto`` too; the PyTorch
    runtimes run checkpoints, and an INT8 file not at all."""
    if runtime not in RUNTIMES:
        raise PrunekitError(f"--runtime {runtime!r} is unknown; use {', '.join(RUNTIMES)}")
    if runtime not in ("auto", "onnxruntime"):
        if file.precision == "int8":
            raise PrunekitError(f"{file.name} is an INT8 model (QDQ): --runtime {runtime} runs "
                                f"float PyTorch models and has no INT8 kernels for it; use "
                                f"--runtime onnxruntime (the default for a file)")
        raise PrunekitError(f"{file.name} is an ONNX file: --runtime {runtime} runs PyTorch "
                            f"checkpoints; use --runtime onnxruntime (the default for a "
                            f"file), or bench its checkpoint")
    if device.type != "cpu":
        raise PrunekitError(f"{file.name} runs in onnxruntime on the CPU here (the onnxruntime "
                            f"package has no {device.type} provider); use --device cpu")
    return "onnxruntime"


def _checkpoint_figures(ck: Checkpoint, model: Detector) -> dict[str, Any]:
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    nonzero = sum(int((p != 0).sum()) for p in params)
    dense_bytes = sum(t.numel() * 4 for t in ck.state.values() if t.is_floating_point())
    macs, macs_nonzero, macs_formula, formula_note = count_macs(model)
    return {"params_total": total, "params_nonzero": nonzero, "macs": macs,
            "macs_nonzero": macs_nonzero, "macs_by_formula": macs_formula,
            "macs_note": formula_note or None, "bytes_dense": dense_bytes,
            "precision": "float32"}


def _file_figures(file: OnnxFile, reference: Detector) -> dict[str, Any]:
    """An exported file's figures: parameters as recorded at export, MACs of its architecture
    (the same dense counts; its zero weights are not seen, so ``macs_nonzero`` is None: bench
    the checkpoint for it), and the file's own size against float32 weights."""
    total, nonzero = file.params
    macs, _, macs_formula, formula_note = count_macs(reference)
    return {"params_total": total, "params_nonzero": nonzero, "macs": macs,
            "macs_nonzero": None, "macs_by_formula": macs_formula,
            "macs_note": formula_note or None, "bytes_dense": 4 * total,
            "precision": file.precision}


def bench(ck: Checkpoint | OnnxFile, *, device: str = "cpu", batch: int = 1,
          threads: int | None = None, latency: bool = True, min_run_time: float = 2.0,
          runtime: str = "auto") -> dict[str, Any]:
    """Measure a checkpoint, or an ONNX file ``prunekit export`` wrote (timed in onnxruntime,
    the same fields, so the two compare in one table).

    Args:
        ck: the checkpoint or file (its ``stored_bytes`` is reported as ``bytes_stored``).
        device: ``cpu``, ``cuda`` or ``auto``.
        batch: images per forward pass for latency and throughput.
        threads: CPU threads for the timed runs (default: torch's current setting).
        latency: time the model; ``False`` reports only the static figures.
        min_run_time: seconds of timed runs to collect.
        runtime: ``auto``, ``onednn-graph`` (CPU), ``eager`` or ``onnxruntime`` (CPU; see the
            module docstring);
            ``auto`` falls back to eager for a model oneDNN Graph cannot run, and
            ``runtime_fallback`` in the figures says why.

    Returns:
        The figures, JSON-serialisable.
    """
    if batch < 1:
        raise PrunekitError(f"--batch must be at least 1, got {batch}")
    check_threads(threads, timed=latency)
    threads = torch.get_num_threads() if threads is None else threads
    if latency and not min_run_time > 0:
        raise PrunekitError(f"--min-time must be more than 0 seconds of timed runs, got "
                            f"{min_run_time:g}; 2 is the default")
    dev = resolve_device(device)
    if isinstance(ck, OnnxFile):
        used = resolve_file_runtime(ck, runtime, dev)
        if ck.batch not in (None, batch):
            raise PrunekitError(f"{ck.name} was exported with a fixed batch of {ck.batch}; "
                                f"bench it with --batch {ck.batch}, or export with --batch "
                                f"dynamic")
        model = ck.build(threads=threads, decoded_ok=True)
        static = _file_figures(ck, model.reference)
    else:
        used = resolve_runtime(runtime, dev)  # a bad --runtime fails before any work
        model = ck.build()
        used = resolve_runtime(runtime, dev, model.runtimes)
        static = _checkpoint_figures(ck, model)
    shape = model.input_shape
    total, nonzero = static["params_total"], static["params_nonzero"]
    stored = ck.stored_bytes
    result: dict[str, Any] = {
        "model": ck.name,
        "arch": ck.arch.get("name"),
        **static,
        "sparsity": 1 - nonzero / total if total else 0.0,
        "flops": 2 * static["macs"],
        "bytes_stored": stored,
        "compression_ratio": static["bytes_dense"] / stored if stored else None,
        "latency_ms": None,
        "latency_iqr_ms": None,
        "throughput": None,
        "device": dev.type,
        "threads": threads,
        "batch": batch,
        "img_size": shape[1] if shape[1] == shape[2] else list(shape[1:]),
        "runtime": None,
        "runtime_fallback": None,
        "torch": torch.__version__,
    }
    if latency:
        timed = Latency(model, torch.rand(batch, *shape, device=dev), used,
                        threads=threads, fallback=runtime == "auto")
        median, iqr = timed.measure(min_run_time)
        result.update(latency_ms=median * 1e3, latency_iqr_ms=iqr * 1e3,
                      throughput=batch / median, runtime=timed.runtime,
                      runtime_fallback=timed.fallback_reason)
    return result


def format_csv_row(figures: dict[str, Any]) -> str:
    """A header line and one row of :func:`bench`'s ``figures``, for appending the rows of
    several models (a checkpoint and its exported files) into one table: every model gives
    the same columns. ``None`` is an empty cell; a list (a non-square ``img_size``) is JSON."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(figures)
    writer.writerow("" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else
                    repr(v) if isinstance(v, float) else v for v in figures.values())
    return out.getvalue()
