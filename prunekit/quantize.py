"""Static INT8 quantization of an exported graph (``prunekit export --int8``) with onnxruntime's
quantization tool: QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized
operator, which onnxruntime fuses into its integer kernels: QLinearConv, QLinearMatMul and the
element-wise QLinear* operators), per-channel symmetric int8 weights, activations as uint8 with
a zero point (the U8S8 form onnxruntime's x86 kernels run fastest), ranges calibrated on real
images.

**What is quantized** is the family's plan (:meth:`~prunekit.models.base.Detector.quantization`):
the operator types worth running in integers, and the modules that stay in float with the reason
(the graph's nodes carry the module path they were exported from, so a module is found by
name). Operator types outside the plan run in float between a DequantizeLinear and a
QuantizeLinear: Deformable DETR's ``GridSample`` (the deformable sampling) always does. Matrix
products are quantized where one side is a weight (``MatMulConstBOnly``): attention's products
of two activations stay in float.

**Output convolutions padded to 16 filters** (:func:`_pad_output_convolutions`): onnxruntime's
fast integer convolution (MLAS's symmetric kernels) takes only layers whose output channels are
at least 16 and a multiple of 4 (AVX-512), 8 (AVX2, AVX-VNNI) or 16 (ARM); others fall back to
im2col and a general matrix product, 2–4× slower (measured: 64 → 255 channels at 52², 434 µs;
64 → 256, 122 µs). A convolution that writes one of the graph's outputs with another count
(YOLOv3's heads: 3 × (5 + classes) = 255) gets zero filters up to the next multiple of 16 and a
``Slice`` after it, which runs on uint8: the same outputs, exactly. Inner layers are left as
they are: a slice there costs more than it saves (yolov3-416 at 30 % filters, where compaction
leaves 45, 90, 179… channels: 49.8 ms against 44.1 ms, heads only 42.1 ms); ``mask --compact
--round-to`` is what aligns them.

**Each convolution on its faster kernel** (:func:`_matrix_product_layers`): onnxruntime runs an
integer convolution with the symmetric kernels when its weights' zero point is 0, and otherwise
with its general uint8 × int8 matrix product, which uses AMX where the CPU has it
(``MatMulInteger`` 2048³ on two threads of an Intel Xeon with AMX: 1.89 T MACs a second; the
symmetric kernels reach about 0.45). Storing a layer's weights one step lower with zero point −1
is the same function, to the bit, where the stored values stay in range. Each convolution is
timed alone, on its own input shape, both ways on the exporting CPU, and stored for the matrix
product where that takes less than 0.9 of the time (yolov3-416 on an Intel Xeon with AMX: 55 of
74 layers dense, 13 at 75 % filters; dense 72.9 → 52.0 ms, 75 % 10.2 → 9.7 ms, 8-bit). In a
7-bit file a filter whose weights reach −64 would pass the ±64 bound (below) stored one step
lower: that filter is quantized again from its float weights at 63 steps a side (its scale
×64/63, its bias with it), the file's other filters keep their values, and every stored weight
stays within ±64 (one zero point per layer: onnxruntime before mid-2026, whose 1.20 and later
prunekit takes, refuses a convolution whose filters' zero points differ).

**Weights in 7 bits** (``weight_bits``, default 7): on an x86 CPU without VNNI (AVX2, AVX-512
without VNNI), onnxruntime's uint8 × int8 kernels add pairs of products in 16-bit registers
(``vpmaddubsw``), which saturate once 255 × |w| × 2 passes 32767: with weights in the full int8
range a product sum is clipped silently. Weights kept within ±64 (onnxruntime's
``reduce_range``: 255 × 64 × 2 = 32640) cannot overflow there, and cost one bit of weight
precision everywhere (OpenVINO documents the same saturation and the same workaround).
Measured on the Deformable DETR baseline (100 calibration images, the 500 validation images):
mAP50 −4.74 points with 8-bit weights on this AVX2 CPU, −0.40 with 7-bit ones; YOLOv3's
baseline −0.09 and ±0.00. ``weight_bits=8`` is for CPUs whose 8-bit dot products do not
saturate (AVX-512 VNNI, AVX-VNNI, AMX, ARM); an INT8 file is checked on the CPU that exports it.

**Calibration** (``method``): ``minmax`` (each tensor's observed range), ``entropy`` (the range
that minimises the KL divergence between the float and the quantized histogram, TensorRT's
method) or ``percentile`` (99.999th percentile of absolute values). Images are fed a few at a
time, so memory stays that of a few forward passes whatever ``--calib`` is.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import io
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.device import cpu_info
from prunekit.errors import PrunekitError
from prunekit.models.base import Quantization
from prunekit.onnx import session

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "minmax"
WEIGHT_BITS = (7, 8)
DEFAULT_WEIGHT_BITS = 7
# Images held at once while calibrating (onnxruntime keeps every intermediate output of a
# collection round in memory: yolov3-416 holds about 100 MB of activations per image).
_ROUND = 8


@dataclass(frozen=True)
class Quantized:
    """An INT8 model and what stayed in float.

    Attributes:
        data: the serialised ONNX model.
        quantized: operator type → number of nodes quantized.
        kept_float: what stays in float → why (modules of the plan, and operator types outside
            it that compute), with their node counts in the description.
        matrix_product: the convolutions stored for onnxruntime's general matrix product
            (:func:`_matrix_product_layers`).
        timed_on: where the file's convolutions were timed: ``cpu`` (its model name) and
            ``threads``.
    """

    data: bytes
    quantized: dict[str, int]
    kept_float: dict[str, str]
    matrix_product: tuple[str, ...] = ()
    timed_on: dict[str, Any] = field(default_factory=dict)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise PrunekitError(f"--calib-method {method!r} is unknown; use {', '.join(METHODS)}")


def check_weight_bits(bits: int) -> None:
    if bits not in WEIGHT_BITS:
        raise PrunekitError(f"--weight-bits {bits} is not offered; use 7 (every CPU) or 8 (CPUs "
                            f"with VNNI)")


def quantize(data: bytes, plan: Quantization, feeds: Callable[[], Iterable[dict[str, Any]]],
             count: int, *, method: str = DEFAULT_METHOD,
             weight_bits: int = DEFAULT_WEIGHT_BITS, threads: int | None = None) -> Quantized:
    """The INT8 model of a float graph.

    Args:
        data: the float ONNX model (``prunekit.onnx.export``).
        plan: the family's plan: operator types to quantize, modules to keep in float.
        feeds: a new iterator over calibration inputs (one dict of arrays per image) on every
            call.
        count: how many items ``feeds`` yields.
        method: ``minmax``, ``entropy`` or ``percentile``.
        weight_bits: 7 (weights within ±64, exact on every CPU) or 8 (the full int8 range).
        threads: onnxruntime's threads when the file's convolutions are timed (default:
            torch's).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    check_method(method)
    check_weight_bits(weight_bits)
    proto = onnx.load_from_string(data)
    excluded, kept = _excluded(proto, plan)
    op_types = list(plan.op_types)
    slices = _pad_output_convolutions(proto, plan, set(excluded))
    if slices:  # the padding is sliced off in uint8; any other Slice keeps its plan
        op_types.append("Slice")
        excluded += [n.name for n in proto.graph.node
                     if n.op_type == "Slice" and n.name not in slices]
    # Only 7-bit filters are ever quantized again (an 8-bit weight is at least −127): their
    # float weights as the quantizer reads them, padding included.
    floats = _float_weights(proto) if weight_bits == 7 else {}
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    # The histogram calibrators print their progress on stdout, which carries data here.
    with tempfile.TemporaryDirectory(prefix="prunekit-int8-") as tmp, _root_log_quiet(), \
            contextlib.redirect_stdout(io.StringIO()):
        out = Path(tmp) / "int8.onnx"
        quantize_static(proto, out, _Reader(feeds, count), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=op_types, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=weight_bits == 7,
                        nodes_to_exclude=excluded, calibrate_method=calibrate,
                        extra_options={"CalibStridedMinMax": _round(count),
                                       "MatMulConstBOnly": True})
        q = onnx.load(str(out))
    dequantized = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = Counter(n.op_type for n in q.graph.node if n.op_type in plan.op_types
                        and any(i in dequantized for i in n.input))
    kept.update(_float_ops(q, plan))
    threads = threads or torch.get_num_threads()
    moved = _matrix_product_layers(q, threads, floats, weight_bits)
    timed_on = {"cpu": (cpu_info("model name") or {}).get("model name") or "unknown",
                "threads": threads}
    for conv in moved:
        if not _shift_weights(q, conv, floats, weight_bits):
            raise AssertionError(f"{conv}: shifted when timed, not now")
    return Quantized(q.SerializeToString(), dict(quantized), kept, tuple(moved), timed_on)


@contextlib.contextmanager
def _root_log_quiet():
    """onnxruntime's quantizer advises on the root logger ("consider pre-processing": its shape
    inference and graph optimisation, which the exporter's graph needs not; measured: the same
    graph after onnxruntime's own optimisation); prunekit reports on stderr itself."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _round(count: int) -> int:
    """The largest number of images up to ``_ROUND`` that divides ``count`` (onnxruntime's
    strided collection wants equal rounds)."""
    return max(k for k in range(1, min(_ROUND, count) + 1) if count % k == 0)


class _Reader:
    """onnxruntime's ``CalibrationDataReader``, in rounds (``set_range``), from ``feeds``."""

    def __init__(self, feeds: Callable[[], Iterable[dict[str, Any]]], count: int) -> None:
        self._feeds, self._count = feeds, count
        self._items: Any = iter(())
        self._source: Any = None

    def __len__(self) -> int:
        return self._count

    def set_range(self, start_index: int, end_index: int) -> None:
        if self._source is None or start_index == 0:
            self._source = iter(self._feeds())
        self._items = (next(self._source) for _ in range(end_index - start_index))

    def get_next(self) -> dict[str, Any] | None:
        return next(self._items, None)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _scopes(node: Any) -> list[str]:
    """The module paths a node was exported from (torch's exporter records them)."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                return [s for s in ast.literal_eval(p.value) if isinstance(s, str)]
            except (ValueError, SyntaxError):
                return []
    return []


def _excluded(proto: Any, plan: Quantization) -> tuple[list[str], dict[str, str]]:
    """Nodes of the plan's float modules, and what they are → why."""
    names, kept = [], {}
    for pattern, why in plan.float_modules.items():
        hits = [n for n in proto.graph.node
                if n.op_type in plan.op_types
                and any(fnmatch.fnmatchcase("." + s, pattern) for s in _scopes(n))]
        names += [n.name for n in hits]
        if hits:
            ops = Counter(n.op_type for n in hits)
            kept[f"{pattern.lstrip('*.')} ({_count(ops)})"] = why
    return names, kept


# Output channels onnxruntime's symmetric integer convolution takes on every CPU it has one for.
_FILTER_MULTIPLE = 16


def _pad_output_convolutions(proto: Any, plan: Quantization, excluded: set[str]) -> set[str]:
    """Pads each integer convolution that writes a graph output, and whose filter count is not
    a multiple of ``_FILTER_MULTIPLE``, with zero filters up to one, and slices them off after
    it (module docstring). Edits ``proto``; returns the names of the ``Slice`` nodes added."""
    from onnx import helper, numpy_helper

    if "Conv" not in plan.op_types:
        return set()
    outputs = {o.name for o in proto.graph.output}
    weights = {i.name: i for i in proto.graph.initializer}
    nodes, slices, resized = [], set(), set()
    for node in proto.graph.node:
        nodes.append(node)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if (node.op_type != "Conv" or node.name in excluded or group != 1
                or node.output[0] not in outputs or node.input[1] not in weights):
            continue
        filters = weights[node.input[1]].dims[0]
        padded = -(-filters // _FILTER_MULTIPLE) * _FILTER_MULTIPLE
        if padded == filters:
            continue
        for name in node.input[1:3]:  # the weight, and the bias where there is one
            value = numpy_helper.to_array(weights[name])
            zeros = np.zeros((padded - filters, *value.shape[1:]), value.dtype)
            weights[name].CopyFrom(numpy_helper.from_array(np.concatenate([value, zeros]), name))
            resized.add(name)
        out = node.output[0]
        node.output[0] = f"{out}/padded"
        bounds = [f"{out}/{b}" for b in ("starts", "ends", "axes")]
        for name, value in zip(bounds, ([0], [filters], [1]), strict=True):
            proto.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64),
                                                                   name))
        nodes.append(helper.make_node("Slice", [node.output[0], *bounds], [out],
                                      name=f"{out}/unpad"))
        slices.add(nodes[-1].name)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    # the exporter records the initializers' shapes too; those changed
    kept = [v for v in proto.graph.value_info if v.name not in resized]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    return slices


# A convolution moves to the matrix product where that takes less than this share
# of the symmetric kernel's time (so that timing noise does not decide near ties).
_MATRIX_PRODUCT_GAIN = 0.9


def _integer_convolutions(q: Any) -> list[tuple[Any, Any]]:
    """(Conv, its input's DequantizeLinear) of each convolution
    onnxruntime fuses into a symmetric integer one: int8 weights, every zero point 0, and a
    QuantizeLinear after it."""
    import onnx
    from onnx import numpy_helper

    made = {o: n for n in q.graph.node for o in n.output}
    read = {i for n in q.graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    consts = {t.name: t for t in q.graph.initializer}
    found = []
    named = Counter(n.name for n in q.graph.node)
    for conv in q.graph.node:
        if conv.op_type != "Conv" or not conv.name or named[conv.name] > 1:
            continue
        x, w = made.get(conv.input[0]), made.get(conv.input[1])
        if (x is None or w is None or x.op_type != "DequantizeLinear"
                or w.op_type != "DequantizeLinear" or conv.output[0] not in read
                or len(w.input) < 3 or w.input[0] not in consts or w.input[2] not in consts
                or consts[w.input[0]].data_type != onnx.TensorProto.INT8
                or numpy_helper.to_array(consts[w.input[2]]).any()
                or next((a.i for a in conv.attribute if a.name == "group"), 1) != 1):
            continue
        found.append((conv, x))
    return found


def _matrix_product_layers(q: Any, threads: int, floats: dict[str, tuple[Any, Any]],
                           weight_bits: int) -> list[str]:
    """The convolutions of ``q`` that onnxruntime runs faster with its general matrix product
    than with its symmetric kernels on this CPU (module docstring): each timed alone, on its
    own input shape, both ways."""
    from onnx import shape_inference

    convs = _integer_convolutions(q)
    if not convs:
        return []
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*shape_inference.infer_shapes(q).graph.value_info, *q.graph.input)}
    moved = []
    for conv, x in convs:
        shape = shapes.get(x.input[0])
        if shape:
            shape[0] = shape[0] or 1  # a dynamic batch, timed at batch 1
        if not shape or not all(d > 0 for d in shape):
            continue
        alone = _alone(q, conv, x.input[0], shape)
        shifted = type(alone)()
        shifted.CopyFrom(alone)
        if not _shift_weights(shifted, conv.name, floats, weight_bits):
            continue
        times = [_kernel_time(m.SerializeToString(), x.input[0], shape, threads)
                 for m in (alone, shifted)]
        if times[1] < _MATRIX_PRODUCT_GAIN * times[0]:
            moved.append(conv.name)
    return moved


def _alone(q: Any, conv: Any, input_name: str, shape: list[int]) -> Any:
    """A model of ``conv`` alone with its quantization: uint8 in, uint8 out."""
    from onnx import TensorProto, helper

    made = {o: n for n in q.graph.node for o in n.output}
    after = next(n for n in q.graph.node if n.op_type == "QuantizeLinear"
                 and n.input[0] == conv.output[0])
    nodes = [made[i] for i in conv.input if i in made] + [conv, after]
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes, "alone", [helper.make_tensor_value_info(input_name, TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info(after.output[0], TensorProto.UINT8, None)],
        [t for t in q.graph.initializer if t.name in used])
    model = helper.make_model(graph, opset_imports=q.opset_import)
    model.ir_version = q.ir_version
    return model


def _kernel_time(data: bytes, input_name: str, shape: list[int], threads: int,
                 runs: int = 15) -> float:
    """Median kernel time of the integer convolution in ``data`` (onnxruntime's profiler), µs."""
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="prunekit-kernel-") as tmp:
        run = session(data, threads=threads, nchwc=False, profile=str(Path(tmp) / "profile"))
        for _ in range(runs + 3):
            run.run(None, {input_name: x})
        events = json.loads(Path(run.end_profiling()).read_text())
    times = [e["dur"] for e in events if e.get("cat") == "Node"
             and e.get("args", {}).get("op_name") == "QLinearConv"]
    return float(np.median(times[3:] or times or [np.inf]))


def _float_weights(proto: Any) -> dict[str, tuple[Any, Any]]:
    """Each named convolution of the float graph → its float weight and bias (None without
    one), as the quantizer read them."""
    from onnx import numpy_helper

    consts = {t.name: t for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type == "Conv" and node.name and node.input[1] in consts:
            bias = node.input[2] if len(node.input) > 2 else ""
            out[node.name] = (numpy_helper.to_array(consts[node.input[1]]),
                              numpy_helper.to_array(consts[bias]) if bias in consts else None)
    return out


def _shift_weights(q: Any, conv_name: str, floats: dict[str, tuple[Any, Any]],
                   weight_bits: int) -> bool:
    """Stores ``conv_name``'s int8 weights one step lower with zero point −1, which onnxruntime
    runs with its general matrix product instead of its symmetric kernels: the same weights, to
    the bit, in an 8-bit file (stored within −128…126). In a 7-bit file a filter whose weights
    reach −64 would pass the ±64 bound stored lower; that filter is quantized again from its
    float weights at 63 steps a side (its scale ×64/63, its bias with it), the others keep
    their values. False, and ``q`` as it was, where that filter's float weights or bias are not
    at hand."""
    from onnx import numpy_helper

    made = {o: n for n in q.graph.node for o in n.output}
    conv = next(n for n in q.graph.node if n.name == conv_name)
    dq = made[conv.input[1]]
    consts = {t.name: t for t in q.graph.initializer}

    def value(name: str) -> np.ndarray:
        return numpy_helper.to_array(consts[name]).copy()

    def store(name: str, array: np.ndarray) -> None:
        consts[name].CopyFrom(numpy_helper.from_array(array, name))

    w, zero = value(dq.input[0]).astype(np.int32), value(dq.input[2])
    lowest = -(2 ** (weight_bits - 1))
    if w.min() < -127 or zero.any():
        raise AssertionError(f"{conv_name}: weights outside ±127 or zero point not 0")
    rows = w.reshape(len(w), -1)
    again = rows.min(1) - 1 < lowest
    if again.any():
        real_w, real_b = floats.get(conv_name, (None, None))
        bias_dq = made.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if real_w is None or real_w.shape != w.shape or (bias_dq is not None and (
                real_b is None or bias_dq.op_type != "DequantizeLinear"
                or bias_dq.input[0] not in consts or real_b.shape != (len(w),))):
            return False
        steps = -lowest - 1
        real = real_w.reshape(len(real_w), -1)[again].astype(np.float64)
        scale = value(dq.input[1])
        scale[again] = (np.abs(real).max(1) / steps).astype(scale.dtype)
        rows[again] = np.clip(np.round(real / scale[again, None].astype(np.float64)), -steps,
                              steps)
        store(dq.input[1], scale)
        if bias_dq is not None:
            x_scale = value(made[conv.input[0]].input[1]).astype(np.float32)
            bias, bias_scale = value(bias_dq.input[0]), value(bias_dq.input[1])
            bias_scale[again] = x_scale * scale[again]
            bias[again] = np.round(real_b[again] / bias_scale[again]).astype(bias.dtype)
            store(bias_dq.input[0], bias)
            store(bias_dq.input[1], bias_scale)
    store(dq.input[0], (rows - 1).reshape(w.shape).astype(np.int8))
    store(dq.input[2], np.full_like(zero, -1))
    return True


def _float_ops(q: Any, plan: Quantization) -> dict[str, str]:
    """Computing operators outside the plan's types, with the family's reason where it gives
    one."""
    found = Counter(n.op_type for n in q.graph.node if n.op_type in plan.float_ops)
    return {f"{op} ({n})": plan.float_ops[op] for op, n in found.items()}


def _count(ops: Counter) -> str:
    return ", ".join(f"{n} {op}" for op, n in ops.most_common())


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``other`` against ``reference``, in dB:
    10·log10(Σ ref² / Σ (ref − other)²); infinite when they are equal."""
    ref = reference.astype(np.float64)
    noise = float(((ref - other.astype(np.float64)) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal > 0 else float("-inf")


def describe(quantized: Quantized, *, method: str, calib: int, data: str,
             weight_bits: int = DEFAULT_WEIGHT_BITS) -> str:
    """The metadata entry of an INT8 file (JSON)."""
    weights = "int8 per channel, symmetric" + (", within ±64 (7 bits)" if weight_bits == 7
                                               else "")
    if quantized.matrix_product:
        weights += (f"; {len(quantized.matrix_product)} convolutions stored one step lower with "
                    f"zero point -1, for onnxruntime's matrix product (faster on the exporting "
                    f"CPU)" + (", their filters that reached -64 quantized at 63 steps a side"
                               if weight_bits == 7 else ""))
    return json.dumps({"method": method, "calibration_images": calib, "data": data,
                       "format": "QDQ", "weights": weights, "weight_bits": weight_bits,
                       "activations": "uint8 per tensor", "quantized": quantized.quantized,
                       "kept_float": quantized.kept_float,
                       "matrix_product": list(quantized.matrix_product),
                       "kernels_timed_on": quantized.timed_on})
