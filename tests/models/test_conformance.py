"""The family interface's contract, checked for every member of every installed family
(SPEC section 4).

A family joins by being installed (its entry point in the group `prunekit.families`): the
members it declares small (`Family.small`, with the `init` arguments that make them so) are
tested here; nothing in this file names a family. Every member in every state a user can reach,
through every command, is tests/models/test_states.py.
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import torch

from prunekit import checkpoint
from prunekit.attack import AttackConfig, attack_originals
from prunekit.cli import app
from prunekit.errors import PrunekitError
from prunekit.init import init
from prunekit.mask import PruneConfig, mask, prunable
from prunekit.models import registry
from prunekit.models.base import Detector, Target
from prunekit.score import METHODS, ScoreConfig, score

MEMBERS = [pytest.param((name, args), id=name) for family in registry.families()
           for name, args in family.small_members().items()]
CLASSES = ["red-circle", "green-circle", "blue-square", "orange-square", "triangle", "cross"]


@pytest.fixture(params=MEMBERS)
def member(request):
    name, args = request.param
    ck = init(name, names=CLASSES, seed=0, **args)
    _randomise_norms(ck.state)
    return ck


def _randomise_norms(state: dict[str, torch.Tensor]) -> None:
    """Non-trivial normalisation statistics and scales, so that compaction and eval-mode
    losses are really tested."""
    g = torch.Generator().manual_seed(0)
    for name, t in state.items():
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith("running_mean"):
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def _image_targets(model: Detector, n: int = 2) -> tuple[torch.Tensor, list[Target]]:
    """n images at the model's input size, with boxes well inside them."""
    _, h, w = model.input_shape
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, h, w, generator=g)
    geometry = model.transform.geometry(w, h)
    targets = []
    for i in range(n):
        boxes = torch.tensor([[0.1 * w, 0.15 * h, 0.45 * w, 0.6 * h],
                              [0.55 * w, 0.3 * h, 0.9 * w, 0.85 * h]])[: i + 1]
        targets.append(Target(boxes, torch.tensor([1, 4])[: i + 1], geometry))
    return images, targets


def _norm_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running" in k or "num_batches" in k}


def test_loss_in_eval_mode_is_finite_differentiable_and_leaves_norms_alone(member):
    model = member.build().eval()
    images, targets = _image_targets(model)
    before = _norm_buffers(model)
    x = images.clone().requires_grad_()
    total, parts = model.loss(model(x), targets)
    assert torch.isfinite(total) and {"box", "cls"} <= set(parts)
    weights = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, [x, *weights], allow_unused=True)
    assert grads[0].abs().sum() > 0
    assert sum(float(g.abs().sum()) for g in grads[1:] if g is not None) > 0
    after = _norm_buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    empty = [Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), t.geometry)
             for t in targets]
    assert torch.isfinite(model.loss(model(images), empty)[0])


def test_postprocess_returns_known_boxes_in_original_pixels(member):
    model = member.build().eval()
    _, h, w = model.input_shape
    # an original image of another shape: the transform's geometry maps it in and out
    width, height = int(w * 1.5), int(h * 0.75)
    geometry = model.transform.geometry(width, height)
    boxes = torch.tensor([[0.1 * width, 0.2 * height, 0.3 * width, 0.7 * height],
                          [0.6 * width, 0.1 * height, 0.95 * width, 0.5 * height]])
    target = Target(boxes, torch.tensor([2, 5]), geometry)
    found = model.postprocess(model.ideal_outputs([target]), [geometry], conf=0.5, iou=0.45,
                              max_det=100)[0]
    order = found.boxes[:, 0].argsort()
    assert found.labels[order].tolist() == [2, 5]
    assert torch.allclose(found.boxes[order], boxes, atol=1e-2)
    assert (found.scores > 0.9).all()


def test_evidence_is_linear_in_the_outputs_and_repeats_per_block(member):
    model = member.build().eval()
    if not model.has_evidence():
        assert "deeplift" in model.refused_scores()
        pytest.skip(f"the {model.family} family defines no evidence (optional): DeepLIFT is "
                    f"refused for it")
    images, targets = _image_targets(model)
    n = len(targets)
    with torch.no_grad():
        first = model(images)
        b, c = model(images.flip(0)), model(1 - images)

        def second_block(outputs):  # evidence of a second block, the first one fixed
            both = tuple(torch.cat((p, q)) for p, q in zip(first, outputs, strict=True))
            return model.evidence(both, targets)

        mixed = tuple(2 * p - 0.5 * q for p, q in zip(b, c, strict=True))
        torch.testing.assert_close(second_block(mixed)[n:],
                                   2 * second_block(b)[n:] - 0.5 * second_block(c)[n:],
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(second_block(b)[:n], model.evidence(first, targets))
        torch.testing.assert_close(second_block(first)[n:], model.evidence(first, targets))


def test_checkpoint_round_trip_is_bit_exact(member):
    again = checkpoint.from_bytes(checkpoint.to_bytes(member))
    assert again.family == member.family and again.arch == member.arch
    assert sorted(again.state) == sorted(member.state)
    assert all(torch.equal(again.state[k], v) for k, v in member.state.items())
    x = torch.rand(1, *member.build().input_shape)
    with torch.no_grad():
        for p, q in zip(member.build()(x), again.build()(x), strict=True):
            assert torch.equal(p, q)


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.3, 0.5, 0.75])
def test_compacted_model_equals_masked_model(member, ratio):
    ck = score(member, "l1-filter")
    masked = mask(ck, PruneConfig(ratio, granularity="filter"))
    small = mask(ck, PruneConfig(ratio, granularity="filter", compact=True))
    model_masked, model_small = masked.build(), small.build()
    x = torch.rand(2, *model_masked.input_shape)
    with torch.no_grad():
        for p, q in zip(model_masked(x), model_small(x), strict=True):
            assert torch.allclose(p, q, atol=1e-4), (ratio, float((p - q).abs().max()))
    assert sum(p.numel() for p in model_small.parameters()) < \
        sum(p.numel() for p in model_masked.parameters())
    for name, keep in masked.masks.items():
        assert (masked.state[name][~keep] == 0).all()  # masks really zero what they claim


def test_an_attack_stays_inside_its_eps_ball(member):
    model = member.build().eval()
    _, h, w = model.input_shape
    originals = [torch.rand(3, h + 8, w - 8), torch.rand(3, h + 8, w - 8)]
    geometry = model.transform.geometry(w - 8, h + 8)
    targets = [Target(torch.tensor([[4.0, 6, 30, 40]]), torch.tensor([0]), geometry)] * 2
    eps = 0.03
    adv = attack_originals(model, originals, targets, AttackConfig(eps=eps, steps=2),
                           generator=torch.Generator().manual_seed(0))
    for a, x in zip(adv, originals, strict=True):
        assert a.shape == x.shape
        assert (a - x).abs().max() <= eps + 1e-6
        assert a.min() >= 0 and a.max() <= 1
        assert (a - x).abs().max() > 0.5 * eps  # and it really moved


@pytest.mark.parametrize("method", METHODS)
def test_every_score_method_runs_or_refuses_clearly(member, method, synth_data):
    try:
        out = score(member, ScoreConfig(method, data=str(synth_data / "train.json"), steps=2,
                                        batches=1, batch_size=4, workers=0), device="cpu")
    except PrunekitError as e:
        assert "\n" not in str(e) and method in str(e)
        return
    names = prunable(member)
    assert sorted(out.scores) == sorted(names)
    for n in names:
        assert out.scores[n].shape == member.state[n].shape
        assert torch.isfinite(out.scores[n]).all()


def test_detect_then_evaluate(member, synth_data, tmp_path, runner):
    path = tmp_path / "m.st"
    checkpoint.save(member, path)
    val = str(synth_data / "val.json")
    found = runner.invoke(app, ["detect", str(path), "--data", val, "--conf", "0.001",
                                "--device", "cpu", "--threads", "1"])
    assert found.exit_code == 0, found.stderr
    dets = pd.read_csv(io.StringIO(found.stdout))
    assert len(dets) > 0 and set(dets.category) <= set(CLASSES)
    scored = runner.invoke(app, ["evaluate", "-", "--gt", val], input=found.stdout)
    assert scored.exit_code == 0, scored.stderr
    metrics = json.loads(scored.stdout)
    assert 0 <= metrics["map"] <= 1 and metrics["detections"] == len(dets)
