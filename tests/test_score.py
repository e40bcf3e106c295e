"""score: every method covers every prunable weight and leaves the weights alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from prunekit import checkpoint
from prunekit.cli import app
from prunekit.errors import PrunekitError
from prunekit.mask import prunable
from prunekit.score import ScoreConfig, score


def _ck(synth_data):
    from prunekit.init import init

    return init("yolov3-small", dataset=synth_data / "train.json", img_size=64,
                options={"width": 0.125})


@pytest.mark.parametrize("method", ["magnitude", "l1-filter", "random", "taylor", "hydra"])
def test_every_prunable_weight_gets_a_score(synth_data, method):
    ck = _ck(synth_data)
    out = score(ck, ScoreConfig(method, data=str(synth_data / "train.json"), steps=3, batches=2,
                                batch_size=8, workers=0), device="cpu")
    names = prunable(ck)
    assert sorted(out.scores) == sorted(names)
    for n in names:
        s = out.scores[n]
        assert s.shape == ck.state[n].shape and s.dtype == torch.float32
        assert torch.isfinite(s).all() and (s >= 0).all()
        assert torch.equal(out.state[n], ck.state[n])  # scoring never changes weights
    assert out.history[-1]["command"] == "score"


def test_random_scores_are_unrelated_to_weights_initialised_with_the_same_seed():
    from prunekit.init import init

    ck = init("yolov3-tiny", classes=3, img_size=64, seed=0)
    out = score(ck, ScoreConfig("random", seed=0))
    for n in prunable(ck):
        if ck.state[n].numel() >= 10_000:
            pair = torch.stack((ck.state[n].flatten(), out.scores[n].flatten()))
            assert abs(torch.corrcoef(pair)[0, 1]) < 0.05, n
    assert torch.equal(score(ck, ScoreConfig("random", seed=0)).scores[n], out.scores[n])
    assert not torch.equal(score(ck, ScoreConfig("random", seed=1)).scores[n], out.scores[n])


def test_l1_filter_scores_are_filter_norms():
    from prunekit.score import l1_filter

    w = torch.randn(4, 3, 3, 3)
    s = l1_filter({"w": w}, ["w"])["w"]
    assert torch.allclose(s.flatten(1).mean(1), w.abs().flatten(1).sum(1))


def test_data_methods_need_data():
    from tests.conftest import tiny_checkpoint

    with pytest.raises(PrunekitError, match="needs training images"):
        score(tiny_checkpoint(), "deeplift")
    with pytest.raises(PrunekitError, match="unknown"):
        score(tiny_checkpoint(), "nope")


def test_shell_pipeline_score_mask_finetune(synth_data, tmp_path):
    """The SPEC's pipeline, in a real shell: score | mask | finetune."""
    model = tmp_path / "model.st"
    checkpoint.save(_ck(synth_data), model)
    train = synth_data / "train.json"
    exe = f"{sys.executable} -m prunekit"
    command = (f"{exe} score --method deeplift {model} --data {train} --batches 1 "
               f"--batch-size 8 --workers 0 --device cpu"
               f" | {exe} mask --structured --ratio 0.75"
               f" | {exe} finetune --data {train} --steps 2 --batch-size 8 --workers 0 "
               f"--device cpu -o {tmp_path / 'pruned.st'}")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    pruned = checkpoint.load(tmp_path / "pruned.st")
    assert [h["command"] for h in pruned.history] == ["init", "score", "mask", "finetune"]
    assert pruned.masks and not pruned.scores
    for name, keep in pruned.masks.items():
        assert (pruned.state[name][~keep] == 0).all()


def test_a_weight_without_a_gradient_is_left_unpruned_and_said_so(synth_data, monkeypatch,
                                                                   runner, tmp_path):
    """The frozen-parameter rule's other half: a prunable weight that gets no gradient (here the
    loss reads only the first head, so the others' last convolutions take no part) has no Taylor
    score; score records it, and mask leaves it whole."""
    from prunekit.models.yolov3.detector import YOLOv3

    loss = YOLOv3.loss
    monkeypatch.setattr(YOLOv3, "loss", lambda self, outputs, targets: loss(
        self, (outputs[0], outputs[1].detach(), outputs[2].detach()), targets))
    ck = _ck(synth_data)
    out = score(ck, ScoreConfig("taylor", data=str(synth_data / "train.json"), batches=1,
                                batch_size=4, workers=0), device="cpu")
    left = out.history[-1]["args"]["unscored"]
    assert left and not set(left) & set(out.scores)
    assert set(left) | set(out.scores) == set(prunable(ck))
    path = tmp_path / "scored.st"
    checkpoint.save(out, path)
    result = runner.invoke(app, ["mask", str(path), "--ratio", "0.5", "-o",
                                 str(tmp_path / "m.st")])
    assert result.exit_code == 0, result.stderr
    assert f"{len(left)} weights without scores left unpruned" in result.stderr
    masked = checkpoint.load(tmp_path / "m.st")
    for n in left:
        assert n not in masked.masks and torch.equal(masked.state[n], ck.state[n])
    assert all(n in masked.masks for n in out.scores)
