"""mask: exact ratios, coupled filters, heads kept, compaction equal to masking, small files."""

from __future__ import annotations

import pytest
import torch

from prunekit import checkpoint
from prunekit.bench import bench
from prunekit.errors import PrunekitError
from prunekit.init import init
from prunekit.mask import PruneConfig, make_masks, mask, prunable
from prunekit.models.yolov3.arch import head_conv_indices
from prunekit.models.yolov3.groups import filter_groups
from prunekit.score import magnitude, random_scores

PAPER_RATIOS = [0.25, 0.5, 0.65, 0.75, 0.85, 0.9, 0.95, 0.99]


def _scored(arch="yolov3-small", img=64, width=0.25, seed=0, classes=3):
    ck = init(arch, classes=classes, img_size=img, options={"width": width}, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for name, t in ck.state.items():  # non-trivial BatchNorm so compaction is really tested
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith(("running_mean", "bn.bias")):
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        elif name.endswith("bn.weight"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    ck.scores = random_scores(ck.state, prunable(ck), seed)
    return ck


@pytest.mark.parametrize("ratio", PAPER_RATIOS)
def test_weight_ratio_is_exact_per_layer(ratio):
    ck = _scored()
    out = mask(ck, PruneConfig(ratio))
    for name in prunable(out):
        w = out.state[name]
        removed = int((w == 0).sum())
        assert abs(removed - ratio * w.numel()) <= 1, (name, removed, w.numel())
        assert torch.equal(out.masks[name], w != 0)
    assert out.scores == {}


@pytest.mark.parametrize("ratio", PAPER_RATIOS)
def test_filter_ratio_is_exact_outside_coupled_groups(ratio):
    ck = _scored()
    out = mask(ck, PruneConfig(ratio, granularity="filter"))
    heads = head_conv_indices(ck.arch)
    for group in filter_groups(ck.arch):
        removed = [int((~out.masks.get(f"layers.{i}.conv.weight",
                                       torch.ones(1, dtype=torch.bool)).flatten(1).any(1)).sum())
                   if f"layers.{i}.conv.weight" in out.masks else 0 for i in group.layers]
        if not group.prunable:
            assert removed == [0] * len(group.layers)
            continue
        assert len(set(removed)) == 1  # coupled filters go together
        n = group.size
        expected = min(round(ratio * n), n - 1)  # at least one filter survives
        assert removed[0] == expected
        assert abs(removed[0] - ratio * n) <= 1
        for i in group.layers:
            gone = ~out.masks[f"layers.{i}.conv.weight"].flatten(1).any(1)
            assert (out.state[f"layers.{i}.bn.weight"][gone] == 0).all()
            assert (out.state[f"layers.{i}.bn.bias"][gone] == 0).all()
    for i in heads:
        assert (out.state[f"layers.{i}.conv.weight"].flatten(1).abs().sum(1) > 0).all()


def test_residual_groups_of_yolov3():
    ck = init("yolov3", classes=80)
    groups = [g for g in filter_groups(ck.arch) if len(g.layers) > 1]
    # one group per Darknet-53 stage: the downsampling conv and every block's 3×3 conv
    assert [len(g.layers) for g in groups] == [2, 3, 9, 9, 5]
    assert groups[2].layers[0] == 12 and groups[2].size == 256


def test_kernel_granularity_and_global_scope():
    ck = _scored()
    out = mask(ck, PruneConfig(0.5, granularity="kernel"))
    for name in prunable(out):
        m = out.masks[name]
        if m.ndim == 4 and m.shape[-1] > 1:
            per_kernel = m.flatten(2)
            assert (per_kernel.all(2) | ~per_kernel.any(2)).all()  # whole kernels only
    glob = mask(ck, PruneConfig(0.6, scope="global"))
    total = sum(glob.state[n].numel() for n in prunable(glob))
    zero = sum(int((glob.state[n] == 0).sum()) for n in prunable(glob))
    assert abs(zero - 0.6 * total) <= 1


def test_a_new_mask_combines_with_the_earlier_one():
    ck = _scored()
    first = mask(ck, PruneConfig(0.5))
    first.scores = magnitude(ck.state, prunable(ck))  # different scores the second time
    second = mask(first, PruneConfig(0.75))
    for name in prunable(ck):
        assert not (second.masks[name] & ~first.masks[name]).any()  # nothing comes back
        removed = int((~second.masks[name]).sum())
        assert abs(removed - 0.75 * second.masks[name].numel()) <= 1


def test_missing_scores_and_bad_ratio_are_refused():
    ck = init("yolov3-small", classes=3, img_size=64, options={"width": 0.125})
    with pytest.raises(PrunekitError, match="no scores for 'layers.0.conv.weight'.*prunekit "
                                            "score"):
        mask(ck, PruneConfig(0.5))
    ck.scores = magnitude(ck.state, prunable(ck))
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(PrunekitError, match="--ratio"):
            mask(ck, PruneConfig(bad))


@pytest.mark.parametrize(("arch", "img", "width"), [("yolov3", 128, 1.0),
                                                    ("yolov3-tiny", 128, 1.0),
                                                    ("yolov3-small", 160, 0.25)])
def test_compacted_model_equals_masked_model(arch, img, width):
    ck = _scored(arch, img=img, width=width if arch == "yolov3-small" else None, classes=80
                 if arch != "yolov3-small" else 6)
    x = torch.rand(2, 3, img, img)
    for ratio in (0.25, 0.5, 0.75, 0.9):
        masked = mask(ck, PruneConfig(ratio, granularity="filter"))
        small = mask(ck, PruneConfig(ratio, granularity="filter", compact=True))
        with torch.no_grad():
            a, b = masked.build()(x), small.build()(x)
        for ya, yb in zip(a, b, strict=True):
            assert torch.allclose(ya, yb, atol=1e-4), (ratio, (ya - yb).abs().max())
        p_masked = sum(v.numel() for v in masked.build().parameters())
        p_small = sum(v.numel() for v in small.build().parameters())
        assert p_small < p_masked * (1 - ratio) ** 1.5 + 0.1 * p_masked


def test_compacted_checkpoint_is_smaller_faster_and_self_describing(tmp_path):
    ck = _scored("yolov3-small", img=160, width=None, classes=6)
    small = mask(ck, PruneConfig(0.75, granularity="filter", compact=True))
    path = tmp_path / "small.st"
    checkpoint.save(small, path)
    loaded = checkpoint.load(path)
    assert [s["filters"] for s in loaded.arch["layers"] if s["type"] == "conv"] == \
        [s["filters"] for s in small.arch["layers"] if s["type"] == "conv"]
    before = bench(ck, latency=False)
    after = bench(loaded, latency=False)
    assert after["macs"] < 0.2 * before["macs"]
    assert after["params_total"] < 0.2 * before["params_total"]
    assert after["params_nonzero"] == after["params_total"] - int(
        sum((p == 0).sum() for p in loaded.build().parameters()))


@pytest.mark.parametrize(("ratio", "limit"), [(0.9, 0.14), (0.5, 0.55)])
def test_unstructured_checkpoint_size_follows_sparsity(ratio, limit):
    ck = init("yolov3-tiny", classes=80)
    dense = len(checkpoint.to_bytes(ck))
    ck.scores = magnitude(ck.state, prunable(ck))
    pruned = len(checkpoint.to_bytes(mask(ck, PruneConfig(ratio))))
    assert pruned <= limit * dense, pruned / dense


def test_make_masks_leaves_the_checkpoint_alone():
    ck = _scored()
    before = {k: v.clone() for k, v in ck.state.items()}
    make_masks(ck, 0.5, granularity="filter")
    assert all(torch.equal(v, before[k]) for k, v in ck.state.items())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_round_to_keeps_a_multiple_of_channels_and_the_best_ones(scope):
    ck = _scored(width=0.5)
    plain = mask(ck, PruneConfig(0.7, granularity="filter", scope=scope))
    rounded = mask(ck, PruneConfig(0.7, granularity="filter", scope=scope, round_to=8))
    grew = 0
    for group in filter_groups(ck.arch):
        if not group.prunable:
            continue
        w = f"layers.{group.layers[0]}.conv.weight"
        keep = rounded.masks[w].flatten(1).any(1)
        before = plain.masks[w].flatten(1).any(1)
        kept = int(keep.sum())
        assert kept % 8 == 0 or kept == group.size, (group.layers, kept, group.size)
        assert bool((keep | ~before).all())  # what plain pruning keeps is kept
        assert kept - int(before.sum()) < 8
        grew += kept - int(before.sum())
    assert grew > 0  # the rounding did something
    assert rounded.history[-1]["args"]["prune"]["round_to"] == 8
    compacted = mask(ck, PruneConfig(0.7, granularity="filter", scope=scope, round_to=8,
                                     compact=True))
    widths = [m.weight.shape[0] for m in compacted.build().modules()
              if isinstance(m, torch.nn.Conv2d)]
    assert sum(w % 8 == 0 for w in widths) > 0.8 * len(widths)
    with pytest.raises(PrunekitError, match="--round-to rounds the filters"):
        mask(ck, PruneConfig(0.5, round_to=8))
    with pytest.raises(PrunekitError, match="--round-to must be at least 1"):
        mask(ck, PruneConfig(0.5, granularity="filter", round_to=0))


@pytest.mark.parametrize(("flags", "removes"), [(["--structured"], True),
                                             (["--granularity", "kernel"], False)])
def test_mask_compact_says_what_compaction_removed(runner, tmp_path, flags, removes):
    """Compaction removes only filters left wholly empty: the console says how much went, and
    that nothing did where kernel pruning left every filter some weights."""
    from prunekit.cli import app

    path = tmp_path / "scored.st"
    checkpoint.save(_scored(), path)
    result = runner.invoke(app, ["mask", str(path), "--ratio", "0.5", *flags, "--compact", "-o",
                                 str(tmp_path / "m.st")])
    assert result.exit_code == 0, result.stderr
    entry = checkpoint.load(tmp_path / "m.st").history[-1]["args"]
    removed = 1 - entry["prunable_weights_after"] / entry["prunable_weights_before"]
    if removes:
        assert removed > 0.5
        assert f"compacted: {removed:.1%} of prunable weights removed" in result.stderr
    else:
        assert removed == 0
        assert "compacted: no filter was left wholly empty, nothing removed" in result.stderr
