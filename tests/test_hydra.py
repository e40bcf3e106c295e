"""HYDRA: scaled initialisation, straight-through top-k, masks that respect channel groups,
scores that move while the weights stay."""

from __future__ import annotations

import math

import torch

from prunekit.hydra import HydraMasker, _TopK, scaled_init
from prunekit.init import init
from prunekit.mask import PruneConfig, prunable
from prunekit.models.yolov3.arch import head_conv_indices
from prunekit.models.yolov3.groups import filter_groups
from prunekit.score import ScoreConfig, score


def _ck(synth_data):
    return init("yolov3-small", dataset=synth_data / "train.json", img_size=64,
                options={"width": 0.125})


def test_scaled_initialisation_is_hydras():
    w = torch.randn(8, 4, 3, 3)
    s = scaled_init({"w": w}, ["w"])["w"]
    assert torch.allclose(s, math.sqrt(6 / 36) * w / w.abs().max())


def test_topk_mask_passes_the_gradient_straight_through():
    u = torch.tensor([0.3, 0.1, 0.9, 0.5], requires_grad=True)
    m = _TopK.apply(u, 2)
    assert m.tolist() == [0.0, 0.0, 1.0, 1.0]
    (m * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert u.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_hydra_filter_masks_respect_groups_and_heads():
    ck = init("yolov3-small", classes=3, img_size=64, options={"width": 0.25})
    masker = HydraMasker(ck.build(), 0.5, "filter", "layer")
    masks = masker.masks(scaled_init(ck.state, prunable(ck)))
    for i in head_conv_indices(ck.arch):
        assert masks[f"layers.{i}.conv.weight"].all()
    for g in filter_groups(ck.arch):
        if not g.prunable:
            continue
        keeps = [masks[f"layers.{i}.conv.weight"].flatten(1)[:, 0] for i in g.layers]
        assert all(torch.equal(keeps[0], k) for k in keeps)
        assert int(keeps[0].sum()) == g.size - round(0.5 * g.size)


def test_hydra_and_mask_rank_units_alike():
    """The same scores give the same filters in HYDRA's mask and in `prunekit mask`."""
    from prunekit.mask import make_masks

    ck = init("yolov3-small", classes=3, img_size=64, options={"width": 0.25})
    s = scaled_init(ck.state, prunable(ck))
    ck.scores = {n: v.abs() for n, v in s.items()}
    for granularity, scope in (("filter", "layer"), ("weight", "global"), ("kernel", "layer")):
        hard = make_masks(ck, 0.6, granularity=granularity, scope=scope)
        soft = HydraMasker(ck.build(), 0.6, granularity, scope).masks(s)
        for n in prunable(ck):
            expected = hard.get(n, torch.ones_like(soft[n], dtype=torch.bool))
            assert torch.equal(soft[n].bool(), expected), (granularity, scope, n)


def test_hydra_moves_scores_and_lowers_the_masked_loss(synth_data):
    ck = _ck(synth_data)
    init_scores = scaled_init(ck.state, prunable(ck))
    out = score(ck, ScoreConfig("hydra", data=str(synth_data / "train.json"), steps=15,
                                batch_size=8, workers=0, lr=0.5),
                target=PruneConfig(0.9), device="cpu")
    moved = sum(int((out.scores[n] != init_scores[n].abs()).sum()) for n in init_scores)
    assert moved > 0.5 * sum(v.numel() for v in init_scores.values())
