"""ONNX export of a detector in its deployment form, checked with ``onnx.checker`` and verified
against PyTorch with onnxruntime, and onnxruntime sessions for ``bench``.

**The exporter** is ``torch.onnx.export(..., dynamo=True)``: the one torch 2.14 recommends (the
default since torch 2.9; the TorchScript-based exporter is deprecated). It captures the graph
with ``torch.export`` and translates it with onnxscript's ATen library, so the same capture
that checks a model's shapes symbolically gives the dynamic batch dimension, and it writes
opset 18 and later (earlier opsets go through ONNX's version converter, which is lossy; they
are refused here).

**What is written** is the family's :meth:`~prunekit.models.base.Detector.graph`: the deployment
form (BatchNorm folded, compacted widths as they are, masked weights as the zeros they are), with
the input pipeline's colour conversion and normalisation inside, so a deployment feeds pixels in
[0, 1]. The file's metadata (``metadata_props``) holds the class names, the input size and
colour mode, the family and architecture, and what each input and output holds.

**Verification**: the file is run with onnxruntime (CPU) on seeded inputs and its outputs are
compared with PyTorch's for the model as prunekit runs it (not the deployment form, so the check
covers the folding too). A value ``v`` of PyTorch's may differ by at most
``1e-4 · max(1, |v|)``: 1e-4 absolute for logits, probabilities and fractions, and relative for
values above 1 (box corners in pixels, where float32 itself resolves 3e-5 at 400). With a
dynamic batch the check runs at a batch other than the one the graph was captured with. A
mismatch writes nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit._version import __version__
from prunekit.errors import PrunekitError
from prunekit.files import write_atomic
from prunekit.models.base import Detector, Graph

#: The opsets written: 18 (the exporter's own) up to the newest both onnx and onnxruntime know.
MIN_OPSET = 18
DEFAULT_OPSET = 18
TOLERANCE = 1e-4
# The batch a dynamic graph is captured with: torch.export specialises a dimension of size 1
# to the constant 1, so a dynamic batch needs an example of at least 2.
_CAPTURE_BATCH = 2


def max_opset() -> int:
    """The newest opset the installed onnx and onnxruntime both support."""
    import onnx
    import onnxruntime

    # onnxruntime documents its opset per release; its 1.20 supports 21, 1.22 supports 22,
    # 1.24 supports 23. Not queryable at run time, so the version decides.
    major, minor = (int(p) for p in onnxruntime.__version__.split(".")[:2])
    ort = 21 if (major, minor) < (1, 22) else 22 if (major, minor) < (1, 24) else 23
    return min(onnx.defs.onnx_opset_version(), ort)


@dataclass(frozen=True)
class Exported:
    """An exported model: the file's bytes and what the verification measured.

    Attributes:
        data: the serialised ONNX model.
        graph: the exported graph's names and meanings.
        batch: the batch dimension (an int, or ``"dynamic"``).
        opset: the ONNX opset.
        max_error: output name → largest difference from PyTorch, in units of the tolerance's
            scale (``|a − b| / max(1, |b|)``); empty when not verified.
        verified_batch: the batch the verification ran at (None: not verified).
    """

    data: bytes
    graph: Graph
    batch: int | str
    opset: int
    max_error: dict[str, float]
    verified_batch: int | None


def check_opset(opset: int) -> None:
    """An opset this prunekit writes, or a one-line error."""
    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise PrunekitError(f"--opset {opset} is not supported: torch's ONNX exporter writes "
                            f"opsets {MIN_OPSET} to {top} with this onnx and onnxruntime; "
                            f"use one of those (default {DEFAULT_OPSET})")


def export(model: Detector, *, batch: int | None = None, opset: int = DEFAULT_OPSET,
           decoded: bool = False, verify: bool = True, name: str = "model") -> Exported:
    """The ONNX model of ``model``'s deployment graph (see the module docstring).

    Args:
        model: the detector (masks applied).
        batch: a fixed batch size, or None for a dynamic batch dimension.
        opset: the ONNX opset.
        decoded: decoded boxes and scores instead of the raw outputs.
        verify: compare onnxruntime's outputs with PyTorch's and refuse a mismatch.
        name: the model's name, for messages and the metadata.
    """
    check_opset(opset)
    if batch is not None and batch < 1:
        raise PrunekitError(f"--batch must be 'dynamic' or at least 1, got {batch}")
    model = model.float().cpu().eval()
    graph = model.graph(decoded=decoded)
    capture = batch or _CAPTURE_BATCH
    inputs = model.graph_inputs(capture, torch.Generator().manual_seed(0))
    proto = _capture(graph, inputs, dynamic=batch is None, opset=opset, name=name)
    _describe(proto, model, graph, batch, name, decoded)
    data = proto.SerializeToString()
    _check(data, name)
    errors: dict[str, float] = {}
    verified = None
    if verify:
        verified = batch or capture + 1
        errors = _verify(data, model, graph, decoded, verified, name)
    return Exported(data, graph, batch or "dynamic", opset, errors, verified)


def write(exported: Exported, out: str | Path) -> None:
    """Write the file (complete or not at all)."""
    write_atomic(out, exported.data)


def write_bytes(data: bytes, out: str | Path) -> None:
    """Write a serialised model (complete or not at all)."""
    write_atomic(out, data)


def _capture(graph: Graph, inputs: tuple[torch.Tensor, ...], *, dynamic: bool, opset: int,
             name: str) -> Any:
    """The ONNX ModelProto of ``graph`` traced on ``inputs``."""
    import onnx_ir

    dims = ({0: torch.export.Dim("batch", min=1, max=4096)},) * len(inputs) if dynamic \
        else None
    # The exporter reports its progress on stdout, which carries data here, and warns and logs
    # about its own passes (constant folding skipped, initializers kept), nothing a user can
    # act on: prunekit reports on stderr itself, one line per problem.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), \
            _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(graph.module, inputs, dynamo=True, opset_version=opset,
                                        input_names=list(graph.inputs),
                                        output_names=list(graph.outputs),
                                        dynamic_shapes=dims, verbose=False)
        except Exception as e:  # the exporter raises many types; each is one failure here
            raise PrunekitError(f"torch's ONNX exporter cannot export {name}: "
                                f"{_first_line(e)}; try another --opset, or report it") from e
    _register_dangling_constants(program.model.graph)
    return onnx_ir.serde.serialize_model(program.model)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _register_dangling_constants(graph: Any) -> None:
    """Make constants that the exporter's optimiser left without a producer initializers.

    onnxscript 0.7's optimiser, folding HF's ``inverse_sigmoid`` (successive clamps of a
    sigmoid), leaves a Clip reading a constant that no node produces and no initializer holds
    (``onnx.checker``: "input 'sigmoid_min_1' of node Clip is not output of any previous
    nodes"). The value is known (``const_value``), so it is registered as the initializer it
    should be; nothing else changes.
    """
    for node in graph.all_nodes():
        for value in node.inputs:
            if (value is not None and value.producer() is None and not value.is_graph_input()
                    and value.name not in graph.initializers and value.const_value is not None):
                graph.register_initializer(value)


def _describe(proto: Any, model: Detector, graph: Graph, batch: int | None,
              name: str, decoded: bool) -> None:
    """The metadata a deployment needs to use the file, and prunekit to run it as a model
    (:mod:`prunekit.onnxfile`: the family, architecture, input pipeline and outputs)."""
    height, width = model.input_shape[1:]
    params = list(model.parameters())
    props = {
        "prunekit.version": __version__,
        "prunekit.family": model.family,
        "prunekit.arch": str(model.arch.get("name", "")),
        "prunekit.source": name,
        "prunekit.model": json.dumps({"arch": model.arch, "input": model.input_spec}),
        "prunekit.outputs": "decoded" if decoded else "raw",
        "prunekit.precision": "float32",
        "prunekit.params": json.dumps([sum(p.numel() for p in params),
                                       sum(int((p != 0).sum()) for p in params)]),
        "classes": json.dumps(model.classes),
        "input_size": json.dumps([height, width]),
        "colour": str(model.input_spec.get("colour", "rgb")),
        "batch": "dynamic" if batch is None else str(batch),
        **{f"io.{k}": v for k, v in graph.meaning.items()},
        **graph.metadata,
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "prunekit"
    proto.producer_version = __version__
    proto.doc_string = (f"{name}: {model.family} detector exported by prunekit "
                        f"{__version__}; inputs {', '.join(graph.inputs)}, outputs "
                        f"{', '.join(graph.outputs)} (see metadata io.*)")


def _check(data: bytes, name: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as e:
        raise PrunekitError(f"the ONNX graph exported from {name} does not pass "
                            f"onnx.checker: {_first_line(e)}; nothing was written") from e


def session(data: bytes, *, threads: int, nchwc: bool = True,
            profile: str | None = None) -> Any:
    """An onnxruntime CPU session of ``data`` on ``threads`` threads (intra-op; sequential
    execution, full graph optimisation).

    ``nchwc=False`` leaves float convolutions in NCHW instead of onnxruntime's blocked NCHWc
    layout, its fast float path, for INT8 files: their integer convolutions run in NHWC, so
    the float ones that a plan keeps (YOLOv3's first) paid a conversion out of NCHWc and a
    transpose into NHWC, 1.4-1.6 ms of yolov3-416's INT8 files at every width (75 % compacted
    12.5 -> 10.9 ms; Deformable DETR's unchanged).

    ``profile``: a path prefix; the session records onnxruntime's per-node profile, written
    there by ``end_profiling()``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings go to stderr unasked
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=[] if nchwc else ["NchwcTransformer"])


def _verify(data: bytes, model: Detector, graph: Graph, decoded: bool, batch: int,
            name: str) -> dict[str, float]:
    """Largest scaled difference per output between onnxruntime and PyTorch; an error when
    any exceeds the tolerance."""
    inputs = model.graph_inputs(batch, torch.Generator().manual_seed(1))
    run = session(data, threads=torch.get_num_threads())
    got = run.run(list(graph.outputs), {k: v.numpy() for k, v in
                                        zip(graph.inputs, inputs, strict=True)})
    with torch.no_grad():
        expected = model.graph(decoded=decoded, deployed=False).module(*inputs)
    errors = {}
    for out, a, b in zip(graph.outputs, got, expected, strict=True):
        b = b.numpy()
        if a.shape != b.shape:
            raise PrunekitError(f"the ONNX graph of {name} gives {out} of shape {a.shape} at "
                                f"batch {batch}, PyTorch {b.shape}; nothing was written")
        scaled = np.abs(a.astype(np.float64) - b) / np.maximum(1.0, np.abs(b))
        errors[out] = float(scaled.max()) if scaled.size else 0.0
        if not np.isfinite(errors[out]) or errors[out] > TOLERANCE:
            raise PrunekitError(f"the ONNX graph of {name} differs from PyTorch by "
                                f"{errors[out]:.3g} in {out} at batch {batch} (more than "
                                f"{TOLERANCE:g}); nothing was written; try another --opset, "
                                f"or write it unchecked with --no-verify")
    return errors


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
