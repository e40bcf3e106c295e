"""DeepLIFT weight scores: one pass equals Captum's per-layer LayerDeepLift, contributions are
complete on chain networks, and scoring leaves the model exactly as it was."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerDeepLift
from torch import nn

from prunekit.deeplift import (
    BASELINES,
    DetectionEvidence,
    contributions,
    deeplift_scores,
    make_baseline,
    multipliers,
    prunable_layers,
    separate_nonlinearities,
)
from prunekit.errors import PrunekitError
from prunekit.init import init
from prunekit.models.base import Detector, Geometry, Target
from prunekit.models.yolov3.loss import target_rows
from tests.conftest import tiny_checkpoint, yolo

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are tiny: a second OpenMP thread buys nothing, and on a shared machine
    # its barriers can cost a hundredfold when the other core is busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (image, class, x1, y1, x2, y2) in 64-pixel input coordinates; image 0 has two objects.
ROWS = torch.tensor([[0, 1, 10, 10, 30, 40], [1, 2, 5, 20, 60, 50], [2, 0, 30, 30, 40, 44],
                     [0, 2, 0, 0, 64, 64.0]])


def targets(rows: torch.Tensor, n: int) -> list[Target]:
    """Rows as the neutral per-image targets of n 64-pixel images (input = original pixels)."""
    return [Target(rows[rows[:, 0] == i, 2:], rows[rows[:, 0] == i, 1].long(),
                   Geometry(64, 64)) for i in range(n)]


TARGETS = targets(ROWS, 3)


def _records(n: int) -> list[dict]:
    return [{"geometry": Geometry(64, 64)} for _ in range(n)]


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights at a scale that keeps activations O(1) through depth, and non-trivial
    BatchNorm statistics, so that multipliers are far from zero and BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def _small_with_bare_conv() -> Detector:
    """yolov3-small (width 1/8, 64 px) whose layer 3, inside the first residual block, has no
    BatchNorm: its conv output goes straight into a LeakyReLU."""
    ck = tiny_checkpoint()
    arch = copy.deepcopy(ck.arch)
    arch["layers"][3]["bn"] = False
    return _randomise(yolo("", ck.classes, 64, arch=arch))


def _tiny() -> Detector:
    return _randomise(init("yolov3-tiny", classes=3, img_size=64, options={"width": 0.125}).build())


def _layer_deeplift(scalar_model, layer, x, b):
    return LayerDeepLift(scalar_model, layer, multiply_by_inputs=False).attribute(
        x, baselines=b, target=0)


def _plain_gradient(scalar_model, layer, x):
    saved = {}
    handle = layer.register_forward_hook(lambda m, a, out: saved.__setitem__("out", out))
    try:
        y = scalar_model(x).sum()
    finally:
        handle.remove()
    return torch.autograd.grad(y, saved["out"])[0]


def _assert_same_multipliers(ours, ref):
    scale = ref.abs().max().item()
    assert scale > 1e-3, "multipliers this small would make the comparison vacuous"
    assert (ours - ref).abs().max().item() <= 1e-5 * max(1.0, scale)


# ------------------------------------------------------------------ 1. multipliers, one pass


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_one_pass_multipliers_equal_layer_deeplift_on_yolov3_small(baseline):
    model = _small_with_bare_conv()
    x = torch.rand(3, 3, 64, 64)
    b = make_baseline(x, baseline)
    evidence = DetectionEvidence(model)
    evidence.set_targets(TARGETS)
    layers = prunable_layers(model)
    ours = multipliers(evidence, x, b, layers)
    assert set(ours) == set(layers)
    checked = {
        "layers.0.conv.weight": "the first conv",
        "layers.3.conv.weight": "directly before a LeakyReLU, inside a residual block",
        "layers.6.conv.weight": "conv → BN → LeakyReLU in a residual block",
        "layers.45.conv.weight": "after a route and an upsample",
        "layers.39.conv.weight": "a head conv",
        "layers.63.conv.weight": "another head conv",
    }
    for name in checked:
        _assert_same_multipliers(ours[name], _layer_deeplift(evidence, layers[name], x, b))
    # The rescale rule is really in play: the multipliers are not the gradients.
    for name in ("layers.0.conv.weight", "layers.3.conv.weight"):
        plain = _plain_gradient(evidence, layers[name], x)
        assert (ours[name] - plain).abs().max() > 1e-2 * plain.abs().max()
    # A head conv's multipliers are the target's mask: one per objectness and class summed.
    assert ours["layers.39.conv.weight"].sum() + ours["layers.51.conv.weight"].sum() \
        + ours["layers.63.conv.weight"].sum() > 0


def test_one_pass_multipliers_equal_layer_deeplift_on_yolov3_tiny():
    model = _tiny()
    x = torch.rand(3, 3, 64, 64)
    b = make_baseline(x, "white")
    evidence = DetectionEvidence(model)
    evidence.set_targets(TARGETS)
    layers = prunable_layers(model)
    ours = multipliers(evidence, x, b, layers)
    # Downstream of every LeakyReLU → MaxPool2d pair, stock Captum agrees: layer 12 follows
    # the stride-1 maxpool, 13 and 18 feed the route/upsample, 15 and 22 are heads.
    for name in ("layers.12.conv.weight", "layers.13.conv.weight", "layers.15.conv.weight",
                 "layers.18.conv.weight", "layers.21.conv.weight", "layers.22.conv.weight"):
        _assert_same_multipliers(ours[name], _layer_deeplift(evidence, layers[name], x, b))
    # Upstream of them, Captum 0.9 needs its adjacent nonlinearities separated (captum#1104);
    # with that, every layer agrees, the convs between maxpools included.
    for name, layer in layers.items():
        with separate_nonlinearities(evidence):
            ref = _layer_deeplift(evidence, layer, x, b)
        _assert_same_multipliers(ours[name], ref)


# ------------------------------------------------------------------------ 2. completeness


def _chain() -> nn.Sequential:
    """Conv/BN/LeakyReLU/MaxPool2d with no skips; conv → LeakyReLU directly, LeakyReLU →
    MaxPool2d directly, a dilated and a replicate-padded conv, a linear layer, an N×1 output."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.1),
        nn.Conv2d(8, 6, 3, padding=2, dilation=2), nn.LeakyReLU(0.1),
        nn.Conv2d(6, 4, 3, padding=1, padding_mode="replicate"), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.Tanh(), nn.Linear(8, 1))
    return _randomise(net, seed=1)


@pytest.mark.parametrize("baseline", BASELINES)
def test_contributions_of_every_layer_sum_to_the_output_difference(baseline):
    net = _chain()
    x = torch.rand(5, 3, 16, 16)
    b = make_baseline(x, baseline)
    contrib = contributions(net, x, b, prunable_layers(net))
    with torch.no_grad():
        delta = (net(x) - net(b)).sum().item()
    assert abs(delta) > 1e-3
    assert set(contrib) == {"0.weight", "4.weight", "7.weight", "9.weight", "12.weight",
                            "14.weight"}
    for name, c in contrib.items():
        assert abs(c.sum().item() - delta) <= 1e-4 * abs(delta), name


@pytest.mark.parametrize("baseline", ["black", "white"])
def test_contributions_are_complete_through_a_detector_chain(baseline):
    """A Detector with no skips: conv → BN → LeakyReLU → MaxPool2d → conv → head; the target
    is the real DetectionEvidence."""
    arch = {"name": "chain", "num_classes": 2, "anchors": [[8, 8], [16, 16], [32, 32]],
            "layers": [
                {"type": "conv", "filters": 8, "size": 3, "stride": 1, "pad": 1},
                {"type": "maxpool", "size": 2, "stride": 2},
                {"type": "conv", "filters": 16, "size": 3, "stride": 2, "pad": 1},
                {"type": "conv", "filters": 8, "size": 1, "stride": 1, "pad": 0, "bn": False},
                {"type": "conv", "filters": 21, "size": 1, "stride": 1, "pad": 0, "bn": False,
                 "act": "linear"},
                {"type": "yolo", "mask": [0, 1, 2]}]}
    model = _randomise(yolo("chain", 2, 64, arch=arch))
    x = torch.rand(2, 3, 64, 64)
    b = make_baseline(x, baseline)
    evidence = DetectionEvidence(model)
    evidence.set_targets(targets(torch.tensor([[0, 1, 8, 8, 24, 30], [1, 0, 30, 20, 50, 60.0]]),
                                 2))
    contrib = contributions(evidence, x, b, prunable_layers(model))
    with torch.no_grad():
        delta = (evidence(x) - evidence(b)).sum().item()
    assert abs(delta) > 1e-3
    for name, c in contrib.items():
        assert abs(c.sum().item() - delta) <= 1e-4 * abs(delta), name


def test_contribution_is_weight_times_the_gradient_of_sum_m_delta_z():
    """W · ∂/∂W Σ m · (W ⊛ Δa), by autograd, for every kind of layer the fast paths cover."""
    torch.manual_seed(2)
    net = _randomise(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1),
        nn.Conv2d(8, 6, 1), nn.LeakyReLU(0.1),  # pointwise: the batched-matmul path
        nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=3), nn.LeakyReLU(0.1),
        nn.Conv2d(6, 4, 3, padding="same", dilation=2), nn.LeakyReLU(0.1),  # autograd path
        nn.Flatten(), nn.Linear(4 * 4 * 4, 1)), seed=2)
    x = torch.rand(3, 3, 8, 8)
    b = make_baseline(x, "grey")
    layers = prunable_layers(net)
    ours = contributions(net, x, b, layers)
    m = multipliers(net, x, b, layers)
    inputs = {}
    hooks = [layer.register_forward_hook(lambda mod, a, out, k=k: inputs.__setitem__(k, a[0]))
             for k, layer in layers.items()]
    with torch.no_grad():
        net(torch.cat((x, b)))
    for h in hooks:
        h.remove()
    for name, layer in layers.items():
        delta = inputs[name][:3] - inputs[name][3:]
        w = layer.weight.detach().clone().requires_grad_()
        z = F.linear(delta, w) if isinstance(layer, nn.Linear) else \
            layer._conv_forward(delta, w, None)
        (grad,) = torch.autograd.grad((m[name] * z).sum(), w)
        torch.testing.assert_close(ours[name], layer.weight.detach() * grad,
                                   rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------- the target


def test_evidence_is_the_assigned_detections_outputs():
    from prunekit.models.yolov3.loss import assign

    model = _small_with_bare_conv()
    x = torch.rand(3, 3, 64, 64)
    evidence = DetectionEvidence(model)
    evidence.set_targets(TARGETS)
    with torch.no_grad():
        outputs = model(x)
        got = evidence(x)
        tiled = evidence(torch.cat((x, x.flip(0))))
    c = 5 + model.num_classes
    expected = torch.zeros(3)
    grids = [o.shape[-2:] for o in outputs]
    anchors = [h.anchors for h in model.heads()]
    for out, asg in zip(outputs, assign(target_rows(TARGETS), anchors, grids, 64),
                        strict=True):
        p = out.view(3, -1, c, *out.shape[-2:])
        for i, a, row, col, k in zip(asg.image, asg.anchor, asg.row, asg.col, asg.cls,
                                     strict=True):
            q = p[i, a, :, row, col]
            others = torch.cat((q[5:5 + k], q[6 + k:]))
            # objectness, box and true class count for, the other classes against.
            expected[i] += q[:5].sum() + q[5 + k] - others.mean()
    assert got.shape == (3, 1)
    torch.testing.assert_close(got[:, 0], expected)
    # The second block of a 2N batch uses the same mask (Captum's inputs then baselines).
    torch.testing.assert_close(tiled[:3], got)
    with torch.no_grad():
        torch.testing.assert_close(tiled[3:], evidence(x.flip(0)))


def test_evidence_checks_its_targets():
    model = tiny_checkpoint().build()
    evidence = DetectionEvidence(model)
    with pytest.raises(PrunekitError, match="set_targets"):
        evidence(torch.rand(1, 3, 64, 64))
    with pytest.raises(PrunekitError, match="classes"):
        evidence.set_targets(targets(torch.tensor([[0, 3, 1, 1, 9, 9.0]]), 1))
    with pytest.raises(PrunekitError, match="at least one image"):
        evidence.set_targets([])
    evidence.set_targets(targets(torch.tensor([[0, 0, 1, 1, 9, 9.0]]), 2))
    with pytest.raises(PrunekitError, match="batches of 2"):
        evidence(torch.rand(3, 3, 64, 64))


def test_baselines():
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(make_baseline(x, "black"), torch.zeros_like(x))
    assert torch.equal(make_baseline(x, "white"), torch.ones_like(x))
    assert torch.equal(make_baseline(x, "grey"), torch.full_like(x, 0.5))
    blur = make_baseline(x, "blur")
    assert blur.shape == x.shape
    assert blur.std() < 0.2 * x.std()  # shapes and edges gone
    flat = torch.full((1, 3, 64, 64), 0.3)
    torch.testing.assert_close(make_baseline(flat, "blur"), flat)  # no dark borders


# ---------------------------------------------------------------------------- 3. scores


def _synth_batches(synth_data, n=2):
    from prunekit.data.coco import CocoDetection, loader
    from prunekit.models.yolov3.transform import Letterbox

    data = CocoDetection(synth_data / "train.json", Letterbox(64))
    return [b for _, b in zip(range(n), loader(data, 4), strict=False)]


def _hooks(model):
    return sum(len(getattr(m, attr)) for m in model.modules()
               for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                            "_backward_pre_hooks"))


def test_scores_cover_every_weight_and_leave_the_model_untouched(synth_data):
    model = _randomise(tiny_checkpoint(classes=6).build())
    with torch.no_grad():
        model.layers[3].conv.weight[0] = 0.0  # a whole filter
        model.layers[39].conv.weight[5, 2, 0, 0] = 0.0  # a single head weight
    model.train()  # BatchNorm statistics must not move even so
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _synth_batches(synth_data)

    scores = deeplift_scores(model, batches)

    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _hooks(model) == 0
    convs = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(scores) == set(convs)
    for name, s in scores.items():
        assert s.shape == convs[name].weight.shape and s.dtype == torch.float32
        assert s.device.type == "cpu"
        assert torch.isfinite(s).all() and (s >= 0).all()
    flat = torch.cat([s.flatten() for s in scores.values()])
    assert flat.max() > 0 and flat.unique().numel() > 1000
    assert torch.equal(scores["layers.3.conv.weight"][0], torch.zeros_like(scores[
        "layers.3.conv.weight"][0]))
    assert scores["layers.39.conv.weight"][5, 2, 0, 0] == 0
    assert (scores["layers.3.conv.weight"][1:] > 0).any()


def test_scores_are_the_mean_absolute_contribution_over_max_batches(synth_data, monkeypatch):
    import prunekit.deeplift

    monkeypatch.setattr(prunekit.deeplift, "CPU_CHUNK", 3)  # batches of 4 → passes of 3 + 1
    model = _randomise(tiny_checkpoint(classes=6).build())
    batches = _synth_batches(synth_data, 3)
    drawn = []

    def counting():
        for b in batches:
            drawn.append(1)
            yield b

    scores = deeplift_scores(model, counting(), max_batches=2, baseline="grey")
    assert len(drawn) == 2
    evidence = DetectionEvidence(model)
    layers = prunable_layers(model)
    expected = {}
    for images, batch_targets, _ in batches[:2]:
        evidence.set_targets(batch_targets)
        c = contributions(evidence, images, make_baseline(images, "grey"), layers)
        for k, v in c.items():
            expected[k] = expected.get(k, 0) + v.abs() / 2
    for k in scores:  # float32 sums over passes of 3 + 1 against one of 4: a few ulps apart
        torch.testing.assert_close(scores[k], expected[k], rtol=1e-5, atol=1e-5)


def test_chunks_without_targets_are_skipped_and_chunks_add_up(monkeypatch):
    import prunekit.deeplift

    model = _randomise(tiny_checkpoint().build())
    images = torch.rand(5, 3, 64, 64)
    rows = ROWS[:2].clone()
    rows[1, 0] = 4  # images 0 and 4 have objects; 1-3 have none
    batch = [(images, targets(rows, 5), _records(5))]
    whole = deeplift_scores(model, batch)
    monkeypatch.setattr(prunekit.deeplift, "CPU_CHUNK", 2)  # chunks 0-1, 2-3 (none), 4
    torch.testing.assert_close(deeplift_scores(model, batch), whole)


def test_unlabelled_batches_use_the_models_own_detections():
    model = _randomise(tiny_checkpoint().build())
    images = torch.rand(2, 3, 64, 64)
    unlabelled = [(images, targets(torch.zeros(0, 6), 2), _records(2))]
    heads = [model.layers[i].conv for i in (39, 51, 63)]
    with torch.no_grad():
        for conv in heads:
            conv.bias.view(3, -1)[:, 4] = 12.0  # confident objects everywhere
    scores = deeplift_scores(model, unlabelled)
    assert sum(s.sum() for s in scores.values()) > 0
    with torch.no_grad():
        for conv in heads:
            conv.bias.view(3, -1)[:, 4] = -40.0  # nothing at all
    with pytest.raises(PrunekitError, match="nothing to attribute"):
        deeplift_scores(model, unlabelled)
    # A batch with nothing to attribute is skipped, not averaged in as zeros.
    labelled = [(images, targets(ROWS[:2], 2), _records(2))]
    torch.testing.assert_close(deeplift_scores(model, unlabelled + labelled),
                               deeplift_scores(model, labelled))


# ------------------------------------------------------------------------ 4. bad input


def test_bad_baseline_or_batch_count_is_a_one_line_error():
    model = tiny_checkpoint().build()
    batches = [(torch.rand(1, 3, 64, 64), TARGETS[:1], _records(1))]
    with pytest.raises(PrunekitError, match="baseline 'pink' is unknown; use black, white, "
                                            "grey, blur") as e:
        deeplift_scores(model, batches, baseline="pink")
    assert "\n" not in str(e.value)
    with pytest.raises(PrunekitError, match="baseline"):
        make_baseline(torch.rand(1, 3, 8, 8), "noise")
    with pytest.raises(PrunekitError, match="max-batches"):
        deeplift_scores(model, batches, max_batches=0)


def test_no_captum_warnings_leak_and_hooks_go_even_on_error():
    model = tiny_checkpoint().build()
    evidence = DetectionEvidence(model)
    evidence.set_targets(TARGETS[:1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        multipliers(evidence, torch.rand(1, 3, 64, 64), torch.zeros(1, 3, 64, 64),
                    prunable_layers(model))
    assert not [w for w in caught if "Setting forward, backward hooks" in str(w.message)]
    evidence.set_targets(TARGETS)
    with pytest.raises(PrunekitError):  # 2 images for targets of 3 → error mid-pass
        multipliers(evidence, torch.rand(2, 3, 64, 64), torch.zeros(2, 3, 64, 64),
                    prunable_layers(model))
    assert _hooks(model) == 0 and _hooks(evidence) == 0
    assert not [m for m in model.modules() if hasattr(m, "input") or hasattr(m, "output")]


def test_scoring_works_under_inference_mode():
    model = _randomise(tiny_checkpoint().build())
    batches = [(torch.rand(2, 3, 64, 64), TARGETS[:2], _records(2))]
    expected = deeplift_scores(model, batches)
    with torch.inference_mode():
        got = deeplift_scores(model, batches)
    torch.testing.assert_close(got, expected)
