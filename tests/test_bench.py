"""bench: exact static figures, and a latency measurement that really runs."""

from __future__ import annotations

import json

from prunekit import checkpoint
from prunekit.bench import bench
from prunekit.cli import app
from tests.conftest import tiny_checkpoint

KEYS = {"params_total", "params_nonzero", "sparsity", "macs", "flops", "bytes_stored",
        "bytes_dense", "compression_ratio", "latency_ms", "latency_iqr_ms", "throughput",
        "device", "threads", "batch", "img_size", "torch"}


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
