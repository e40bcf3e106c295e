"""INT8 export (issue 27): static QDQ quantization with per-channel weights, calibrated on
images of the model's data and checked against the float file on the images that did not
calibrate; what stays in float is named; a failed check writes nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch

from prunekit import quantize
from prunekit.cli import app
from prunekit.errors import PrunekitError
from prunekit.export import MIN_SQNR_DB, Int8Config, export_int8
from prunekit.init import init
from prunekit.onnxfile import load_model
from tests.test_onnxfile import lively


@pytest.fixture(scope="module")
def names(synth_data) -> list[str]:
    return [c["name"] for c in json.loads((synth_data / "val.json").read_text())["categories"]]


def _initializer_types(path) -> set[int]:
    return {t.data_type for t in onnx.load(str(path)).graph.initializer}


def test_yolov3_int8_file(names, synth_data, tmp_path):
    ck = lively(init("yolov3-small", names=names, img_size=64, options={"width": 0.25},
                        seed=0), 64)
    val = str(synth_data / "val.json")
    # the default check: every output within MIN_SQNR_DB of the float file's (measured here:
    # 18.9, 19.8 and 21.4 dB), so INT8 meets the bound the command applies
    done = export_int8(ck, tmp_path / "q.onnx", Int8Config(data=val, calib=3, seed=1))
    # 8 validation images: 3 calibrate, the other 5 are the check's
    assert done.held_out == 5 and len(done.calibration) == 3
    assert done.metrics["int8"]["images"] == 5
    assert set(done.metrics) == {"float", "int8"}
    assert set(done.sqnr_db) == {"stride32", "stride16", "stride8"}
    assert all(np.isfinite(v) and v >= MIN_SQNR_DB for v in done.sqnr_db.values())
    convs = sum(1 for n in onnx.load_from_string(done.float.data).graph.node
                if n.op_type == "Conv")
    # every convolution runs in integers but the first, which reads the image
    assert done.quantized.quantized["Conv"] == convs - 1
    assert {"LeakyRelu", "Add"} <= set(done.quantized.quantized)
    assert list(done.quantized.kept_float) == ["layers.0.* (1 Conv, 1 LeakyRelu)"]
    graph = onnx.load_from_string(done.data).graph
    made = {o: n.op_type for n in graph.node for o in n.output}
    first = next(n for n in graph.node if n.op_type == "Conv")
    assert first.input[0] == "images"  # the image reaches it in float, not through a Q/DQ pair
    assert all(made.get(i) != "DequantizeLinear" for i in first.input)
    file = load_model(tmp_path / "q.onnx")
    assert file.precision == "int8" and file.classes == ck.classes
    meta = file.quantization
    assert meta["method"] == "minmax" and meta["calibration_images"] == 3
    assert meta["weight_bits"] == 7 and "within ±64" in meta["weights"]
    assert onnx.TensorProto.INT8 in _initializer_types(tmp_path / "q.onnx")
    # a quarter of the float file's weight bytes, and more besides (scales, zero points)
    assert (tmp_path / "q.onnx").stat().st_size < 0.4 * len(done.float.data)


def test_an_int8_files_float_convolution_runs_in_nchw(names, synth_data, tmp_path,
                                                      monkeypatch):
    """onnxruntime's NCHWc layout is left off for INT8 files: their first convolution, kept in
    float, would otherwise be converted out of NCHWc and transposed into the NHWC of the
    integer kernels after it. The sessions' optimised graphs show what runs."""
    import onnxruntime as ort

    from prunekit.onnxfile import from_file_bytes

    ck = lively(init("yolov3-small", names=names, img_size=64, options={"width": 0.25},
                     seed=0), 64)
    done = export_int8(ck, tmp_path / "q.onnx",
                       Int8Config(data=str(synth_data / "val.json"), calib=2))
    real = ort.InferenceSession
    saved: list[str] = []

    def saving(data, options, **kwargs):
        saved.append(str(tmp_path / f"opt{len(saved)}.onnx"))
        options.optimized_model_filepath = saved[-1]
        return real(data, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", saving)

    def domains(file) -> set[str]:
        file.build(threads=1).session()
        return {n.domain for n in onnx.load(saved[-1]).graph.node}

    assert "com.microsoft.nchwc" in domains(from_file_bytes(done.float.data, "f.onnx"))
    int8 = domains(load_model(tmp_path / "q.onnx"))
    assert "com.microsoft.nchwc" not in int8
    assert "com.microsoft" in int8  # its integer kernels (QLinear*) still run


def test_output_convolutions_get_filters_the_integer_kernels_take(names, monkeypatch):
    """YOLOv3's heads (3 × (5 + classes) filters) are padded with zero filters to a multiple of
    16, which onnxruntime's fast integer convolution needs, and the padding is sliced off in
    uint8 after them: the outputs are exactly those of the file without the padding."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from prunekit import onnx as onnx_export

    model = lively(init("yolov3-small", names=names, img_size=64, options={"width": 0.25},
                        seed=0), 64).build()
    data = onnx_export.export(model, batch=1, verify=False, name="m").data
    filters = 3 * (5 + len(names))
    assert filters % 16  # the case this is about
    images = np.random.default_rng(0).random((3, 1, 3, 64, 64), np.float32)
    # the padding alone: no layer moved to the matrix product by this CPU's timings
    monkeypatch.setattr(quantize, "_matrix_product_layers", lambda *a: [])

    def int8() -> bytes:
        return quantize.quantize(data, model.quantization(),
                                 lambda: ({"images": x} for x in images), 3).data

    padded = onnx.load_from_string(q := int8()).graph
    monkeypatch.setattr(quantize, "_pad_output_convolutions", lambda *a: set())
    plain = int8()
    made = {o: n for n in padded.node for o in n.output}
    ops = [made[made[o.name].input[0]].input[0] for o in padded.output]
    slices = [made[o] for o in ops]  # output ← DequantizeLinear ← QuantizeLinear ← Slice
    assert [n.op_type for n in slices] == ["Slice"] * 3
    weights = {t.name: numpy_helper.to_array(t) for t in padded.initializer}
    for s in slices:
        # Slice ← DequantizeLinear ← QuantizeLinear ← Conv: between quantized pairs, so
        # onnxruntime slices the uint8 values
        conv = made[made[made[s.input[0]].input[0]].input[0]]
        assert conv.op_type == "Conv"
        w = weights[made[conv.input[1]].input[0]]
        assert w.shape[0] == -(-filters // 16) * 16 and not w[filters:].any()
    runs = [ort.InferenceSession(d, providers=["CPUExecutionProvider"]).run(
        None, {"images": images[0]}) for d in (q, plain)]
    for a, b in zip(*runs, strict=True):
        assert a.shape == b.shape and a.shape[1] == filters
        np.testing.assert_array_equal(a, b)


def _small_yolov3_graph(names):
    from prunekit import onnx as onnx_export

    model = lively(init("yolov3-small", names=names, img_size=64, options={"width": 0.25},
                        seed=0), 64).build()
    images = np.random.default_rng(0).random((2, 1, 3, 64, 64), np.float32)
    data = onnx_export.export(model, batch=1, verify=False, name="m").data
    return model, data, images


def _zero_points(data: bytes) -> dict[str, int]:
    """Each weight's int8 zero point (one value per layer: onnxruntime wants them equal)."""
    from onnx import numpy_helper

    graph = onnx.load_from_string(data).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {n.input[0]: int(consts[n.input[2]].flat[0]) for n in graph.node
            if n.op_type == "DequantizeLinear" and len(n.input) > 2
            and consts.get(n.input[0], np.zeros(0, np.uint8)).dtype == np.int8}


def _conv_weights(data: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each convolution weight's stored int8 values (filters × the rest) and per-filter
    scales."""
    from onnx import numpy_helper

    graph = onnx.load_from_string(data).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return [(consts[n.input[0]].reshape(len(consts[n.input[0]]), -1).astype(int),
             consts[n.input[1]]) for n in graph.node
            if n.op_type == "DequantizeLinear" and consts.get(n.input[0]) is not None
            and consts[n.input[0]].dtype == np.int8 and consts[n.input[0]].ndim == 4]


@pytest.mark.parametrize("bits", [7, 8])
def test_convolutions_take_the_faster_kernel(names, monkeypatch, bits):
    """Where onnxruntime's matrix product times faster than its symmetric kernels (here a fake
    timer says so for every layer), the file stores the layer's weights one step lower with
    zero point −1. 8-bit: the same weights, so the same outputs, to the bit. 7-bit: stored
    within ±64 still (CPUs without VNNI stay exact); a filter whose weights reached −64 is
    quantized again at 63 steps a side (scale ×64/63), the others keep their values, and the
    outputs are as close to the float model's as the plain file's."""
    import onnxruntime as ort

    model, data, images = _small_yolov3_graph(names)
    monkeypatch.setattr(quantize, "_kernel_time", lambda d, *a: 50.0 if -1 in
                        _zero_points(d).values() else 100.0)

    def int8() -> quantize.Quantized:
        return quantize.quantize(data, model.quantization(),
                                 lambda: ({"images": x} for x in images), 2, weight_bits=bits)

    moved = int8()
    monkeypatch.setattr(quantize, "_matrix_product_layers", lambda *a: [])
    plain = int8()
    # every integer convolution, the padded heads' too
    assert len(moved.matrix_product) == moved.quantized["Conv"]
    shifted, before = _zero_points(moved.data), _zero_points(plain.data)
    assert set(before.values()) == {0} and set(shifted.values()) == {-1}
    runs = [ort.InferenceSession(d, providers=["CPUExecutionProvider"]).run(
        None, {"images": images[0]}) for d in (moved.data, plain.data, data)]
    if bits == 8:
        w1, w0 = _int8_weights(moved.data), _int8_weights(plain.data)
        assert all(np.array_equal(a.astype(int), b.astype(int) - 1)
                   for a, b in zip(w1, w0, strict=True))
        for a, b in zip(runs[0], runs[1], strict=True):
            np.testing.assert_array_equal(a, b)
    else:
        again = 0
        for (w1, s1), (w0, s0) in zip(_conv_weights(moved.data), _conv_weights(plain.data),
                                      strict=True):
            assert w1.min() >= -64 and w1.max() <= 63 and w0.min() >= -64 and w0.max() <= 64
            redone = w0.min(1) == -64
            again += int(redone.sum())
            np.testing.assert_array_equal(w1[~redone] + 1, w0[~redone])
            np.testing.assert_array_equal(s1[~redone], s0[~redone])
            np.testing.assert_allclose(s1[redone], s0[redone] * 64 / 63, rtol=1e-6)
            assert np.abs(w1[redone] + 1).max(initial=0) <= 63
        assert 0 < again < sum(len(w) for w, _ in _conv_weights(plain.data))
        for a, b, f in zip(*runs, strict=True):
            assert quantize.sqnr_db(f, a) > quantize.sqnr_db(f, b) - 1.0 > 10.0
    meta = json.loads(quantize.describe(moved, method="minmax", calib=2, data="d",
                                        weight_bits=bits))
    assert len(meta["matrix_product"]) == len(moved.matrix_product)
    assert "zero point -1" in meta["weights"]
    assert meta["kernels_timed_on"]["threads"] == torch.get_num_threads()
    assert meta["kernels_timed_on"]["cpu"]


def test_a_7_bit_layer_whose_float_weights_are_not_at_hand_stays_as_it_is(names):
    """A 7-bit filter at −64 is quantized again from its float weights; without them the layer
    is not shifted at all (and so not moved), rather than stored past ±64."""
    from onnx import numpy_helper

    model, data, images = _small_yolov3_graph(names)
    q = onnx.load_from_string(quantize.quantize(
        data, model.quantization(), lambda: ({"images": x} for x in images), 2,
        weight_bits=7, threads=1).data)
    floats = quantize._float_weights(onnx.load_from_string(data))
    made = {o: n for n in q.graph.node for o in n.output}
    consts = {t.name: t for t in q.graph.initializer}
    at_bound = [c.name for c, _ in quantize._integer_convolutions(q) if numpy_helper.to_array(
        consts[made[c.input[1]].input[0]]).min() == -64]
    assert at_bound
    before = q.SerializeToString()
    assert not quantize._shift_weights(q, at_bound[0], {}, 7)
    assert q.SerializeToString() == before
    assert quantize._shift_weights(q, at_bound[0], floats, 7)
    assert q.SerializeToString() != before



def test_a_convolution_timed_alone_is_onnxruntimes_integer_convolution(names):
    """The timing harness: one layer cut out of an INT8 file with its quantization runs as a
    QLinearConv (the profiler finds it), the same with its weights shifted, to the bit."""
    import onnxruntime as ort

    model, data, images = _small_yolov3_graph(names)
    q = onnx.load_from_string(quantize.quantize(
        data, model.quantization(), lambda: ({"images": x} for x in images), 2,
        weight_bits=8, threads=1).data)
    conv, x = quantize._integer_convolutions(q)[3]
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(q).graph.value_info}
    shape = [d.dim_value for d in inferred[x.input[0]].type.tensor_type.shape.dim]
    alone = quantize._alone(q, conv, x.input[0], shape)
    shifted = onnx.ModelProto()
    shifted.CopyFrom(alone)
    assert quantize._shift_weights(shifted, conv.name,
                                   quantize._float_weights(onnx.load_from_string(data)), 8)
    feed = {x.input[0]: np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)}
    out = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
           .run(None, feed)[0] for m in (alone, shifted)]
    assert out[0].dtype == np.uint8 and len(np.unique(out[0])) > 10
    np.testing.assert_array_equal(out[0], out[1])
    for m in (alone, shifted):
        t = quantize._kernel_time(m.SerializeToString(), x.input[0], shape, threads=1, runs=3)
        assert 0 < t < 1e5


def test_deformable_detr_keeps_its_sampling_in_float(names, synth_data, tmp_path):
    ck = init("deformable-detr-small", names=names, img_size=64, seed=0)
    val = str(synth_data / "val.json")
    done = export_int8(ck, tmp_path / "d.onnx", Int8Config(data=val, calib=2))
    assert all(v >= MIN_SQNR_DB for v in done.sqnr_db.values())  # 27–29 dB measured
    assert done.quantized.quantized["MatMul"] > 0 and done.quantized.quantized["Conv"] > 0
    assert "GridSample" not in done.quantized.quantized
    (sampling,) = [k for k in done.quantized.kept_float if k.startswith("GridSample")]
    assert "deformable sampling" in done.quantized.kept_float[sampling]
    assert load_model(tmp_path / "d.onnx").quantization["kept_float"] == \
        done.quantized.kept_float


def test_a_check_the_int8_model_misses_writes_nothing(names, synth_data, tmp_path):
    ck = lively(init("yolov3-small", names=names, img_size=64, options={"width": 0.25},
                        seed=0), 64)
    val = str(synth_data / "val.json")
    with pytest.raises(PrunekitError, match=r"too far from the float one: .* dB .* nothing "
                                            r"was written"):
        export_int8(ck, tmp_path / "q.onnx", Int8Config(data=val, calib=2, min_sqnr_db=200))
    assert list(tmp_path.iterdir()) == []


def test_an_int8_file_of_a_fixed_batch_is_checked_in_chunks_of_it(names, synth_data,
                                                                    tmp_path):
    """`export --int8 --batch 2` (it crashed: the check fed the file four images at a time):
    the check runs the held-out images two at a time, the last one padded, and each image's
    outputs are its own, whatever it is batched with."""
    ck = lively(init("yolov3-small", names=names, img_size=64, options={"width": 0.25},
                        seed=0), 64)
    done = export_int8(ck, tmp_path / "b2.onnx",
                       Int8Config(data=str(synth_data / "val.json"), calib=3, seed=1), batch=2)
    assert done.held_out == 5 and done.metrics["int8"]["images"] == 5
    assert all(v >= MIN_SQNR_DB for v in done.sqnr_db.values())
    model = load_model(tmp_path / "b2.onnx").build()
    assert model.file.batch == 2 and model.file.precision == "int8"
    x = torch.rand(5, 3, 64, 64)
    together = model.run(x)
    assert [a.shape[0] for a in together] == [5, 5, 5]
    alone = [model.run(x[i:i + 1]) for i in range(5)]  # each padded with a blank image
    for k, out in enumerate(together):
        np.testing.assert_allclose(out, np.concatenate([a[k] for a in alone]), atol=1e-5)


def test_calibrating_on_one_file_and_checking_on_another(names, synth_data, tmp_path):
    ck = lively(init("yolov3-small", names=names, img_size=64, options={"width": 0.25},
                        seed=0), 64)
    done = export_int8(ck, tmp_path / "q.onnx", Int8Config(
        data=str(synth_data / "train.json"), calib=4, val=str(synth_data / "val.json")))
    assert done.held_out == 8  # other images: every validation image checks


def test_cli_export_int8_says_what_it_measured(names, synth_data, tmp_path, runner):
    from prunekit import checkpoint

    src = tmp_path / "m.st"
    checkpoint.save(init("deformable-detr-small", names=names, img_size=64, seed=0), src)
    result = runner.invoke(app, ["export", str(src), "-o", str(tmp_path / "q.onnx"), "--int8",
                                 "--data", str(synth_data / "val.json"), "--calib", "2"])
    assert result.exit_code == 0, result.stderr
    err = " ".join(result.stderr.split())
    assert "INT8 QDQ, 7-bit weights, minmax calibration on 2 images of" in err
    assert "kept in float: GridSample (" in err and "the deformable sampling" in err
    assert "INT8 against float, signal-to-noise: logits" in err
    assert "on 6 held-out images of" in err and "mAP50 float" in err
    assert result.stdout == ""


def test_cli_export_8_bit_says_which_convolutions_take_the_matrix_product(
        names, synth_data, tmp_path, runner, monkeypatch):
    from prunekit import checkpoint

    src = tmp_path / "m.st"
    checkpoint.save(init("yolov3-small", names=names, img_size=64, options={"width": 0.25},
                         seed=0), src)
    # a fake timer: the matrix product faster on the layers with 32 filters or more
    monkeypatch.setattr(quantize, "_kernel_time", lambda d, *a: 50.0 if -1 in _zero_points(
        d).values() and max(w.shape[0] for w in _int8_weights(d)) >= 32 else 100.0)
    result = runner.invoke(app, ["export", str(src), "-o", str(tmp_path / "q.onnx"), "--int8",
                                 "--data", str(synth_data / "val.json"), "--calib", "2",
                                 "--weight-bits", "8"])
    assert result.exit_code == 0, result.stderr
    meta = load_model(tmp_path / "q.onnx").quantization
    moved, convs = len(meta["matrix_product"]), meta["quantized"]["Conv"]
    assert 0 < moved < convs
    assert f"{moved} of {convs} integer convolutions run on onnxruntime's matrix product" in \
        " ".join(result.stderr.split())


@pytest.mark.parametrize("bits, dot_products, noted, advised", [
    (8, [], True, False),                 # x86 without VNNI: the kernels may saturate
    (8, ["avx512_vnni"], False, False),   # VNNI: 8-bit weights are exact
    (8, None, False, False),              # not x86, or flags unknown: nothing to say
    (7, [], False, False),                # 7-bit weights never saturate
    (7, None, False, False),
    (7, ["avx512_vnni", "amx_int8"], False, True),  # 8 bits would run exactly, more precisely
])
def test_an_export_says_what_its_weight_bits_mean_on_this_cpu(
        bits, dot_products, noted, advised, monkeypatch, capsys):
    import importlib

    from prunekit import device

    monkeypatch.setattr(device, "int8_dot_products", lambda: dot_products)
    importlib.import_module("prunekit.cli.export")._saturation_note(bits)
    err = " ".join(capsys.readouterr().err.split())
    assert ("this CPU has no VNNI" in err and "--weight-bits 7 runs exactly everywhere" in err) \
        is noted
    assert ("this CPU has avx512_vnni, amx_int8: --weight-bits 8 runs exactly here" in err) \
        is advised
    assert bool(err) is (noted or advised)


def _int8_weights(data: bytes) -> list[np.ndarray]:
    from onnx import numpy_helper

    graph = onnx.load_from_string(data).graph
    return [numpy_helper.to_array(t) for t in graph.initializer
            if t.data_type == onnx.TensorProto.INT8]


def _matmul_of_ones(k: int = 64, n: int = 8) -> bytes:
    """y = relu(x @ W) with W all ones: the product sums a row of x."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Relu", ["mm"], ["y"])],
        "ones", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(np.ones((k, n), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.mark.parametrize("bits, bound", [(7, 64), (8, 127)])
def test_weight_bits_bound_the_int8_weights(bits, bound):
    x = np.ones((1, 64), np.float32)
    done = quantize.quantize(_matmul_of_ones(), quantize.Quantization(op_types=("MatMul",)),
                             lambda: [{"x": x}], 1, weight_bits=bits)
    (w,) = [t for t in _int8_weights(done.data) if t.shape == (64, 8)]
    assert int(np.abs(w.astype(int)).max()) == bound  # the ones sit at the top of the range
    assert json.loads(quantize.describe(done, method="minmax", calib=1, data="d",
                                        weight_bits=bits))["weight_bits"] == bits


def test_seven_bit_weights_do_not_saturate():
    """Every activation at the top of uint8 (255) times every weight at the top of the range:
    with 8-bit weights (127) two products add to 64770, beyond the 16-bit sums of onnxruntime's
    AVX2 kernels on a CPU without VNNI; with 7-bit weights (64) to 32640, which fits. The
    default file computes the float model's 64 exactly, on every CPU."""
    import onnxruntime as ort

    from prunekit.device import int8_dot_products

    x = np.ones((1, 64), np.float32)
    out = {}
    for bits in (7, 8):
        done = quantize.quantize(_matmul_of_ones(), quantize.Quantization(op_types=("MatMul",)),
                                 lambda: [{"x": x}], 1, weight_bits=bits)
        session = ort.InferenceSession(done.data, providers=["CPUExecutionProvider"])
        out[bits] = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(out[7], 64.0, rtol=1e-6)
    if int8_dot_products() == []:  # x86 without VNNI: the 8-bit file saturates here
        assert float(out[8].max()) < 40.0


def test_sqnr_and_rounds():
    ref = np.array([3.0, 4.0])
    assert quantize.sqnr_db(ref, ref) == math.inf
    assert quantize.sqnr_db(ref, ref * 0.9) == pytest.approx(20.0)  # noise is a tenth
    assert quantize._round(100) == 5 and quantize._round(7) == 7 and quantize._round(13) == 1
    assert quantize._round(64) == 8
