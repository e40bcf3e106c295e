"""Checkpoints: bit-exact round trips through files and pipes, sparse storage, bad files."""

from __future__ import annotations

import io
import json
import pickle

import pytest
import torch

from prunekit import checkpoint, load_model, save_model
from prunekit.cli import app
from prunekit.errors import PrunekitError
from tests.conftest import tiny_checkpoint, yolo


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


def _assert_identical(a: checkpoint.Checkpoint, b: checkpoint.Checkpoint) -> None:
    assert a.state.keys() == b.state.keys()
    for k in a.state:
        assert a.state[k].dtype == b.state[k].dtype and a.state[k].shape == b.state[k].shape
        assert torch.equal(_bits(a.state[k]), _bits(b.state[k])), k
    assert a.masks.keys() == b.masks.keys()
    for k in a.masks:
        assert torch.equal(a.masks[k], b.masks[k])
    assert a.scores.keys() == b.scores.keys()
    for k in a.scores:
        assert torch.equal(_bits(a.scores[k]), _bits(b.scores[k]))
    assert (a.arch, a.classes, a.input, a.history) == (b.arch, b.classes, b.input, b.history)


def _masked(ck: checkpoint.Checkpoint, keep: float, seed: int = 0) -> checkpoint.Checkpoint:
    g = torch.Generator().manual_seed(seed)
    for name, t in list(ck.state.items()):
        if name.endswith("conv.weight"):
            mask = torch.rand(t.shape, generator=g) < keep
            ck.masks[name] = mask
            ck.state[name] = t.masked_fill(~mask, 0.0)
    return ck


def test_round_trip_through_a_file_is_bit_exact(tmp_path):
    ck = _masked(tiny_checkpoint(), keep=0.3)
    ck.scores = {k: torch.randn(v.shape) for k, v in ck.state.items() if k.endswith("weight")}
    ck.add_history("test", {"x": 1})
    path = tmp_path / "m.st"
    checkpoint.save(ck, path)
    _assert_identical(ck, checkpoint.load(path))


def test_loaded_tensors_come_in_layer_order_every_time():
    # safetensors returns its tensors in an order that changes from load to load; a seeded
    # random score walks the prunable weights in turn, so it depends on one fixed order
    from prunekit.mask import prunable
    from prunekit.score import score

    ck = tiny_checkpoint()
    ck.masks = {n: torch.ones_like(ck.state[n], dtype=torch.bool) for n in prunable(ck)}
    data = checkpoint.to_bytes(score(ck, "random"))
    loads = [checkpoint.from_bytes(data) for _ in range(5)]
    for got in loads:
        assert list(got.masks) == list(got.scores) == prunable(ck)  # the model's own order
        assert list(got.state) == list(loads[0].state)
    again = score(loads[0], "random")
    for n in prunable(ck):
        assert torch.equal(again.scores[n], loads[1].scores[n])


def test_round_trip_through_stdin_and_stdout_is_bit_exact(runner, tmp_path):
    made = runner.invoke(app, ["init", "yolov3-small", "--classes", "2", "--img-size", "64",
                               "--width", "0.125"])
    assert made.exit_code == 0 and made.stderr == ""
    ck = checkpoint.from_bytes(made.stdout_bytes)
    out = io.BytesIO()
    checkpoint.save(checkpoint.load("-", stdin=io.BytesIO(made.stdout_bytes)), None, stdout=out)
    _assert_identical(ck, checkpoint.from_bytes(out.getvalue()))
    bench = runner.invoke(app, ["bench", "--no-latency"], input=made.stdout_bytes)
    assert bench.exit_code == 0, bench.stderr
    assert json.loads(bench.stdout)["bytes_stored"] == len(made.stdout_bytes)


def test_metadata_is_json_and_self_describing(tmp_path):
    ck = tiny_checkpoint(grey=True)
    path = tmp_path / "m.st"
    checkpoint.save(ck, path)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["prunekit"] == "1"
    assert json.loads(meta["arch"])["name"] == "yolov3-small"
    assert json.loads(meta["classes"]) == ["class0", "class1", "class2"]
    assert json.loads(meta["input"])["colour"] == "grey"
    assert json.loads(meta["history"])[0]["command"] == "init"
    model = load_model(path)
    assert not model.training and model.grey is not None


def test_public_api_round_trip(tmp_path):
    model = yolo("yolov3-tiny", ["a", "b", "c", "d"], 64)
    path = tmp_path / "api.st"
    save_model(model, path)
    loaded = load_model(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), loaded(x), strict=True):
            assert torch.equal(a, b)
    assert load_model(path.read_bytes()).classes == ["a", "b", "c", "d"]


def test_sparse_storage_of_a_90_percent_masked_tiny_model():
    model = yolo("yolov3-tiny", 80)
    dense = len(checkpoint.to_bytes(checkpoint.from_model(model)))
    ck = _masked(checkpoint.from_model(model), keep=0.1)
    data = checkpoint.to_bytes(ck)
    assert len(data) <= 0.14 * dense, len(data) / dense
    _assert_identical(ck, checkpoint.from_bytes(data))


def test_zeroed_weights_without_masks_are_stored_sparsely_too():
    model = yolo("yolov3-tiny", 80)
    ck = checkpoint.from_model(model)
    dense = len(checkpoint.to_bytes(ck))
    ck = _masked(ck, keep=0.1)
    ck.masks = {}
    data = checkpoint.to_bytes(ck)
    assert len(data) <= 0.14 * dense
    _assert_identical(ck, checkpoint.from_bytes(data))


def test_negative_zero_of_a_pruned_weight_loads_as_zero():
    ck = tiny_checkpoint()
    name = next(k for k in ck.state if k.endswith("conv.weight"))
    mask = torch.zeros(ck.state[name].shape, dtype=torch.bool)
    mask.view(-1)[::2] = True
    ck.masks[name] = mask
    ck.state[name] = -ck.state[name].abs() * mask  # pruned places hold -0.0
    back = checkpoint.from_bytes(checkpoint.to_bytes(ck)).state[name]
    assert torch.equal(back, ck.state[name])
    assert not torch.signbit(back[~mask]).any()


def _write_bad(tmp_path, kind):
    path = tmp_path / f"{kind}.st"
    good = checkpoint.to_bytes(tiny_checkpoint())
    if kind == "corrupt":
        path.write_bytes(good[:8] + b"\xff" * 64 + good[72:])
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    elif kind == "torch-save":
        torch.save({"w": torch.zeros(3)}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-prunekit":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "pickle", "torch-save", "empty",
                                  "not-prunekit"])
def test_bad_files_get_one_line_errors(tmp_path, runner, kind):
    path = _write_bad(tmp_path, kind)
    result = runner.invoke(app, ["bench", str(path), "--no-latency"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "out.st"
    original = checkpoint.os.fsync

    def boom(fd):
        original(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", boom)
    with pytest.raises(PrunekitError, match=r"cannot write .*out\.st: No space left on device "
                                            r"\(nothing was written\); free some space"):
        checkpoint.save(tiny_checkpoint(), path)
    assert list(tmp_path.iterdir()) == []
