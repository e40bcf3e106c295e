"""Checkpoint integrity: a digest written with every checkpoint, checked at every load."""

from __future__ import annotations

import random
import struct

import pytest
import torch

from prunekit import checkpoint
from prunekit.errors import CheckpointError
from tests.conftest import tiny_checkpoint


def _scored(ck):
    g = torch.Generator().manual_seed(0)
    ck.scores = {name: torch.rand(ck.state[name].shape, generator=g)
                 for name in ck.build().prunable()}
    return ck


@pytest.fixture(scope="module")
def files():
    """The kinds of file prunekit writes, both families: dense, scored, sparse (90 % of the
    weights masked and stored sparsely), compacted (half the filters removed)."""
    from prunekit.init import init
    from prunekit.mask import PruneConfig, mask

    yolo = tiny_checkpoint()
    detr = init("deformable-detr-small", classes=3, img_size=64, seed=0)
    kinds = {}
    for family, ck in (("yolov3", yolo), ("deformable-detr", detr)):
        kinds[f"{family} dense"] = ck
        kinds[f"{family} scored"] = _scored(ck)
        kinds[f"{family} sparse"] = mask(_scored(ck), PruneConfig(0.9))
        kinds[f"{family} compacted"] = mask(_scored(ck), PruneConfig(0.5, granularity="filter",
                                            compact=True))
    return {k: checkpoint.to_bytes(v) for k, v in kinds.items()}


def test_every_kind_round_trips_with_its_digest(files):
    for kind, data in files.items():
        (n,) = struct.unpack("<Q", data[:8])
        assert b'"digest":"crc32x16m:' in data[8:8 + n], kind
        assert n % 8 == 0, kind  # the payload stays 8-byte aligned
        assert checkpoint.from_bytes(data, kind).state, kind


def test_a_single_flipped_bit_anywhere_is_detected(files):
    """320 seeded trials: one bit flipped at a random place of a random kind of file, header
    (length prefix and JSON) and payload alike; every one is refused by name."""
    rng = random.Random(0)
    kinds = sorted(files)
    where = {"header": 0, "payload": 0}
    for trial in range(320):
        kind = kinds[trial % len(kinds)]
        data = bytearray(files[kind])
        (n,) = struct.unpack("<Q", data[:8])
        # Half the trials in the header (small next to the payload), half anywhere.
        pos = rng.randrange(8 + n) if trial % 2 else rng.randrange(len(data))
        where["header" if pos < 8 + n else "payload"] += 1
        data[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(CheckpointError) as err:
            checkpoint.from_bytes(bytes(data), f"{kind}.st")
        assert f"{kind}.st" in str(err.value), (trial, kind, pos)
    assert min(where.values()) >= 100, where


def test_damaged_payload_names_the_file_and_the_fix(files, tmp_path):
    data = bytearray(files["yolov3 sparse"])
    data[-100] ^= 0x10
    path = tmp_path / "model.st"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.st is damaged: .* restore it from a copy "
                                              r"or write it again"):
        checkpoint.load(path)


def test_a_file_without_a_digest_still_loads(files):
    """Checkpoints written before digests were recorded: loaded, the check skipped."""
    from safetensors.torch import save

    ck = checkpoint.from_bytes(files["yolov3 compacted"])
    tensors, meta = checkpoint.encode(ck)
    old = checkpoint.from_bytes(save(tensors, metadata=meta), "old.st")
    assert old.arch == ck.arch and all(torch.equal(old.state[k], ck.state[k]) for k in ck.state)


def test_the_same_command_writes_the_same_bytes_under_source_date_epoch(tmp_path, runner,
                                                                        monkeypatch, files):
    """init, score and mask twice with the same seed: byte-identical files (the history's time
    is SOURCE_DATE_EPOCH's, metadata in a stable order)."""
    from prunekit.cli import app

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    outputs = []
    for k in range(2):
        d = tmp_path / str(k)
        d.mkdir()
        for args in (["init", "yolov3-small", "--classes", "3", "--img-size", "64", "--width",
                      "0.125", "--seed", "1", "-o", str(d / "a.st")],
                     ["score", "--method", "magnitude", str(d / "a.st"), "-o", str(d / "b.st")],
                     ["mask", str(d / "b.st"), "--ratio", "0.5", "-o", str(d / "c.st")]):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, result.output
        outputs.append([(d / f).read_bytes() for f in ("a.st", "b.st", "c.st")])
    assert outputs[0] == outputs[1]
    history = checkpoint.load(tmp_path / "0" / "c.st").history
    assert {h["time"] for h in history} == {"2026-01-01T00:00:00+00:00"}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    result = runner.invoke(app, ["mask", str(tmp_path / "0" / "b.st"), "--ratio", "0.5", "-o",
                                 str(tmp_path / "x.st")])
    assert result.exit_code == 1 and "SOURCE_DATE_EPOCH" in result.output
    assert not (tmp_path / "x.st").exists()


def test_training_data_and_detections_repeat_byte_for_byte(tmp_path, runner, monkeypatch):
    """data synth, data kitti, init (both families, and from an HF folder), finetune, detect,
    evaluate, grid subset and export twice: the same bytes. (`bench`, a grid cell's
    result.json and the tables built from them hold measured times, which cannot repeat.)"""
    from prunekit.cli import app

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    import shutil

    runs = []
    d = tmp_path / "run"  # the same paths both times: files record where their inputs were
    for _ in range(2):
        shutil.rmtree(d, ignore_errors=True)
        steps = [
            ["data", "synth", str(d / "data"), "--train", "12", "--val", "4", "--size", "64",
             "--seed", "2"],
            ["data", "synth", str(d / "kitti"), "--layout", "kitti", "--images", "10",
             "--width", "128", "--height", "64", "--seed", "2"],
            ["data", "kitti", str(d / "kitti"), str(d / "kc"), "--val-fraction", "0.3",
             "--seed", "2"],
            ["init", "yolov3-small", "--dataset", str(d / "data" / "train.json"), "--img-size",
             "64", "--width", "0.125", "--seed", "1", "-o", str(d / "m.st")],
            ["finetune", str(d / "m.st"), "--data", str(d / "data" / "train.json"), "--steps",
             "3", "--batch-size", "4", "--workers", "0", "--bn-batches", "1", "--device", "cpu",
             "--seed", "1", "-o", str(d / "t.st")],
            ["detect", str(d / "t.st"), "--data", str(d / "data" / "val.json"), "--conf",
             "0.001", "--device", "cpu", "-o", str(d / "dets.csv")],
            ["evaluate", str(d / "dets.csv"), "--gt", str(d / "data" / "val.json"), "-o",
             str(d / "metrics.json")],
            ["grid", "subset", str(d / "data" / "val.json"), str(d / "data" / "val-sub.json"),
             "--images", "2"],
            ["init", "deformable-detr-small", "--dataset", str(d / "kc" / "train.json"),
             "--img-size", "64", "--seed", "1", "-o", str(d / "detr.st")],
            ["export", str(d / "detr.st"), "--hf", str(d / "detr-hf")],
            ["init", "--hf", str(d / "detr-hf"), "-o", str(d / "detr-back.st")],
        ]
        for args in steps:
            result = runner.invoke(app, args)
            assert result.exit_code == 0, (args, result.output)
        runs.append({str(p.relative_to(d)): p.read_bytes()
                     for p in sorted(d.rglob("*")) if p.is_file()})
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) > 20
    assert [k for k in runs[0] if runs[0][k] != runs[1][k]] == []
