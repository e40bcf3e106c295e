"""Darknet .weights import: the byte layout written by hand, both header versions, bad sizes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from prunekit import checkpoint
from prunekit.cli import app
from prunekit.models.yolov3.darknet import dump_weights, parse_cfg
from tests.conftest import fixture_path, yolo


def _random_model(cfg):
    arch, size = parse_cfg(cfg)
    model = yolo(arch['name'], arch['num_classes'], size, arch=arch).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.05)
    return model, arch


def _darknet_bytes(model, arch, major, minor):
    """Darknet's layout, written independently of prunekit's own writer."""
    out = [struct.pack("<3i", major, minor, 0),
           struct.pack("<q" if major * 10 + minor >= 2 else "<i", 12345)]
    for i, spec in enumerate(arch["layers"]):
        if spec["type"] != "conv":
            continue
        block = model.layers[i]
        parts = ([block.bn.bias, block.bn.weight, block.bn.running_mean, block.bn.running_var]
                 if spec["bn"] else [block.conv.bias])
        for t in [*parts, block.conv.weight]:
            out.append(t.detach().numpy().astype("<f4").tobytes())
    return b"".join(out)


@pytest.mark.parametrize(("major", "minor"), [(0, 2), (0, 1)])
def test_weights_import_matches_the_source_model(tmp_path, runner, major, minor):
    cfg = fixture_path("darknet", "yolov3-tiny.cfg")
    model, arch = _random_model(cfg)
    weights = tmp_path / "tiny.weights"
    weights.write_bytes(_darknet_bytes(model, arch, major, minor))
    assert weights.stat().st_size == (35_434_956 if minor == 2 else 35_434_952)
    out = tmp_path / "tiny.st"
    result = runner.invoke(app, ["init", "--cfg", str(cfg), "--weights", str(weights),
                                 "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    loaded = checkpoint.load(out).build()
    x = torch.rand(1, 3, 416, 416)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    assert dump_weights(loaded, major=major, minor=minor, seen=12345) == weights.read_bytes()


@pytest.mark.parametrize("change", ["truncated", "trailing"])
def test_wrong_size_weights_are_refused(tmp_path, runner, change):
    cfg = fixture_path("darknet", "yolov3-tiny.cfg")
    model, arch = _random_model(cfg)
    data = _darknet_bytes(model, arch, 0, 2)
    data = data[:-1000] if change == "truncated" else data + b"\0" * 8
    weights = tmp_path / "bad.weights"
    weights.write_bytes(data)
    out = tmp_path / "bad.st"
    result = runner.invoke(app, ["init", "--cfg", str(cfg), "--weights", str(weights),
                                 "-o", str(out)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")
    assert f"{len(data):,} bytes" in result.stderr and "35,434,956" in result.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [weights]


def test_yolov3_weights_file_size_is_the_official_one():
    from prunekit.models.yolov3.darknet import expected_weights_bytes

    arch, size = parse_cfg(fixture_path("darknet", "yolov3.cfg"))
    assert expected_weights_bytes(yolo('', arch['num_classes'], size, arch=arch)) == 248_007_048
    assert np.dtype("<f4").itemsize == 4
