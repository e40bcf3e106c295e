"""bench: exact static figures, and a latency measurement that really runs."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit import checkpoint
from prunekit.bench import bench, inference_form, onednn_fusion
from prunekit.cli import app
from prunekit.errors import PrunekitError
from prunekit.init import init
from prunekit.mask import PruneConfig, mask, prunable
from prunekit.score import l1_filter
from tests.conftest import tiny_checkpoint

KEYS = {"params_total", "params_nonzero", "sparsity", "macs", "flops", "bytes_stored",
        "bytes_dense", "compression_ratio", "latency_ms", "latency_iqr_ms", "throughput",
        "device", "threads", "batch", "img_size", "runtime", "torch"}


def test_bench_reports_exact_figures_for_yolov3_tiny(runner, tmp_path):
    path = tmp_path / "tiny.st"
    made = runner.invoke(app, ["init", "yolov3-tiny", "--classes", "80", "-o", str(path)])
    assert made.exit_code == 0, made.stderr
    result = runner.invoke(app, ["bench", str(path), "--no-latency"])
    assert result.exit_code == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures.keys() >= KEYS
    assert figures["params_total"] == 8_852_366
    assert figures["macs"] == 2_782_480_896 and figures["flops"] == 2 * figures["macs"]
    assert figures["bytes_stored"] == path.stat().st_size
    assert figures["img_size"] == 416 and figures["latency_ms"] is None


def test_masked_model_reports_sparsity_and_compression():
    ck = tiny_checkpoint()
    for name, t in list(ck.state.items()):
        if name.endswith("conv.weight"):
            keep = (t.abs() >= t.abs().flatten().kthvalue(t.numel() * 3 // 4).values)
            ck.masks[name] = keep
            ck.state[name] = t.masked_fill(~keep, 0.0)
    ck = checkpoint.from_bytes(checkpoint.to_bytes(ck))
    figures = bench(ck, latency=False)
    assert 0.6 < figures["sparsity"] < 0.76
    assert figures["macs_nonzero"] < 0.3 * figures["macs"]
    assert figures["compression_ratio"] > 2.5


def test_latency_is_measured(tmp_path):
    figures = bench(tiny_checkpoint(), threads=1, batch=2, min_run_time=0.2)
    assert figures["latency_ms"] > 0 and figures["latency_iqr_ms"] >= 0
    assert abs(figures["throughput"] - 2 / (figures["latency_ms"] / 1e3)) < 1e-6
    assert figures["threads"] == 1 and figures["batch"] == 2


def _compacted(ck, ratio):
    ck.scores = l1_filter(ck.state, prunable(ck))
    return mask(ck, PruneConfig(ratio, granularity="filter", compact=True))


@pytest.mark.parametrize("make", [
    lambda: tiny_checkpoint(),
    lambda: tiny_checkpoint(grey=True),
    lambda: _compacted(tiny_checkpoint(seed=1), 0.75),
    lambda: init("yolov3-tiny", classes=3, img_size=64, seed=2),  # max-pools, route of one
], ids=["small", "grey", "compacted", "yolov3-tiny"])
def test_each_runtime_computes_the_models_outputs(make):
    ck = make()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = ck.build().eval()(x)
    with onednn_fusion():
        for runtime in ("eager", "onednn-graph"):
            model, xin = inference_form(ck.build(), x, runtime)
            with torch.inference_mode():
                for _ in range(4):  # the profiling executor fuses on the second or third run
                    got = model(xin)
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
            if runtime == "onednn-graph":
                graph = str(torch.jit.last_executed_optimized_graph())
                assert graph.count("prim::oneDNNFusionGroup") >= 3  # really fused, not eager
                # the heads write in the layout oneDNN computes in: no conversion back to NCHW
                assert all(g.is_contiguous(memory_format=torch.channels_last) for g in got)


def test_onednn_graph_form_makes_no_layout_copies_around_upsampling_and_concatenation():
    # yolov3's necks upsample a fused conv's output and concatenate it with an earlier one:
    # both must reach PyTorch's kernels channels-last, as written by the fused convs
    ck = init("yolov3", classes=3, img_size=64, seed=2)
    with onednn_fusion():
        model, x = inference_form(ck.build(), torch.rand(1, 3, 64, 64), "onednn-graph")
        with torch.inference_mode():
            for _ in range(4):
                model(x)
            with torch.profiler.profile() as prof:
                model(x)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::upsample_nearest2d" in ops and any(k.startswith("LlgaPartition") for k in ops)
    assert not ops & {"aten::copy_", "aten::clone"}


def test_one_pass_runs_as_the_timed_ones():
    """``Latency.step_in_context``: one forward pass of the prepared model on the timed
    threads (what the benchmarks profile), the caller's thread count left as it was."""
    from prunekit.bench import Latency

    model = tiny_checkpoint().build()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1  # not the caller's
    t = Latency(model, torch.rand(1, *model.input_shape), "eager", threads=threads)
    seen.clear()  # the warm-up's passes
    t.step_in_context()
    assert seen == [threads] and torch.get_num_threads() == before


def test_a_model_onednn_graph_cannot_compile_falls_back_to_eager_and_says_so():
    # 90 % filter pruning of the eighth-width small model leaves 1-channel convs that oneDNN
    # cannot make a reorder for; `auto` times it in eager mode, an explicit request fails.
    ck = _compacted(tiny_checkpoint(), 0.9)
    figures = bench(ck, threads=1, min_run_time=0.1)
    assert figures["runtime"] == "eager" and figures["latency_ms"] > 0
    assert figures["runtime_fallback"].startswith("oneDNN Graph cannot run this model: ")
    assert "\n" not in figures["runtime_fallback"]
    with pytest.raises(PrunekitError, match="oneDNN Graph cannot run .*; use --runtime eager"):
        bench(ck, threads=1, min_run_time=0.1, runtime="onednn-graph")
    assert bench(tiny_checkpoint(), threads=1, min_run_time=0.1)["runtime_fallback"] is None


def test_runtime_is_reported_and_checked(runner, tmp_path):
    ck = tiny_checkpoint()
    assert bench(ck, threads=1, min_run_time=0.1)["runtime"] == "onednn-graph"
    assert bench(ck, threads=1, min_run_time=0.1, runtime="eager")["runtime"] == "eager"
    assert bench(ck, latency=False)["runtime"] is None
    path = tmp_path / "m.st"
    checkpoint.save(ck, path)
    result = runner.invoke(app, ["bench", str(path), "--runtime", "tensorrt"])
    assert result.exit_code == 1
    assert "--runtime 'tensorrt' is unknown; use auto, onednn-graph, eager" in result.stderr


def test_grid_cell_refuses_an_unknown_runtime_before_any_work(runner, tmp_path):
    path = tmp_path / "m.st"
    checkpoint.save(tiny_checkpoint(), path)
    out = tmp_path / "cell"
    result = runner.invoke(app, ["grid", "cell", str(path), str(out), "--scenario",
                                 "unstructured-deeplift", "--run", "1", "--ratio", "0.5",
                                 "--data", "missing.json", "--val", "missing.json",
                                 "--runtime", "tvm"])
    assert result.exit_code == 1
    assert "--runtime 'tvm' is unknown; use auto, onednn-graph, eager" in result.stderr
    assert not (out / "result.json").exists()


def test_matmul_rate_counts_one_products_macs_and_restores_threads(monkeypatch):
    import prunekit.bench as bench_module

    runs = []

    class Timer:  # the product run for real, its time fixed
        def __init__(self, stmt, globals, num_threads):
            self.stmt, self.globals, self.threads = stmt, globals, num_threads

        def timeit(self, number):
            exec(self.stmt, dict(self.globals))
            runs.append((number, self.threads, torch.get_num_threads()))
            return type("M", (), {"median": 0.25})()

    monkeypatch.setattr(bench_module.benchmark, "Timer", Timer)
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1  # not the caller's
    rate = bench_module.matmul_rate(threads, size=64, repeats=3)
    assert rate == pytest.approx(64 ** 3 / 0.25 / 1e9)
    # One unmeasured, then the measured repeats, on the asked-for threads.
    assert runs == [(1, threads, threads), (3, threads, threads)]
    assert torch.get_num_threads() == before
