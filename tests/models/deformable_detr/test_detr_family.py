"""Deformable DETR on Hugging Face transformers: the reference size, HF folders in and out,
the pixel mask, compaction and export refusals, and no network at any point."""

from __future__ import annotations

import socket

import pytest
import torch

from prunekit import checkpoint
from prunekit.cli import app
from prunekit.errors import PrunekitError
from prunekit.export import export
from prunekit.init import init
from prunekit.mask import PruneConfig, mask
from prunekit.score import ScoreConfig, score

CLASSES = ["Car", "Pedestrian", "Cyclist"]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _hf_model(num_labels: int = 3, **detr):
    """HF's own model, built offline from a small config."""
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(layer_type="basic", hidden_sizes=[32, 64, 128, 256],
                            depths=[1, 1, 1, 1], embedding_size=32,
                            out_features=["stage2", "stage3", "stage4"])
    options = {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
               "encoder_attention_heads": 4, "decoder_attention_heads": 4,
               "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "num_queries": 20,
               "with_box_refine": True, **detr}
    config = DeformableDetrConfig(backbone_config=backbone, use_timm_backbone=False,
                                  backbone=None, use_pretrained_backbone=False,
                                  num_labels=num_labels,
                                  id2label={i: c for i, c in enumerate(CLASSES[:num_labels])},
                                  **options)
    torch.manual_seed(0)
    return DeformableDetrForObjectDetection(config).eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "small-detr"
    model = _hf_model()
    model.save_pretrained(folder)
    return folder, model


def _hf_outputs(model, x, pixel_mask=None):
    with torch.no_grad():
        out = model(pixel_values=(x - MEAN) / STD, pixel_mask=pixel_mask)
    return out.logits, out.pred_boxes


def test_reference_member_has_hfs_parameter_count():
    from transformers import DeformableDetrForObjectDetection

    from prunekit.models.deformable_detr.config import hf_config

    ck = init("deformable-detr", classes=91)
    ours = ck.build()
    hf = DeformableDetrForObjectDetection(hf_config(ck.arch, ck.classes))
    hf_params = sum(p.numel() for p in hf.parameters())
    assert hf_params == 40_069_665  # REFERENCES: the offline ResNet-50 config at 91 labels
    # Trained from scratch, BatchNorm is real: its scale and shift are parameters, where HF's
    # frozen BatchNorm holds the same tensors as buffers.
    frozen_affine = sum(b.numel() for n, b in hf.named_buffers()
                        if n.endswith(("normalization.weight", "normalization.bias")))
    assert sum(p.numel() for p in ours.parameters()) == hf_params + frozen_affine
    ck.arch["batchnorm"] = "frozen"
    assert sum(p.numel() for p in ck.build().parameters() if p.requires_grad) + sum(
        p.numel() for p in ck.build().parameters() if not p.requires_grad) == hf_params


def test_imported_folder_gives_hfs_outputs_and_exports_back(hf_folder, tmp_path):
    folder, hf = hf_folder
    ck = init(options={"hf": folder}, img_size=128)
    assert ck.family == "deformable-detr" and ck.classes == CLASSES
    assert ck.arch["batchnorm"] == "frozen"
    model = ck.build()
    x = torch.rand(2, 3, *model.input_shape[1:])
    with torch.no_grad():
        logits, boxes = model(x)
    ref_logits, ref_boxes = _hf_outputs(hf, x)
    torch.testing.assert_close(logits[:, -1], ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes[:, -1], ref_boxes, atol=1e-5, rtol=0)
    # through a prunekit checkpoint file and back out to HF
    path = tmp_path / "imported.st"
    checkpoint.save(ck, path)
    out = export(checkpoint.load(path), tmp_path / "exported", fmt="hf")
    from transformers import DeformableDetrForObjectDetection

    back = DeformableDetrForObjectDetection.from_pretrained(out, local_files_only=True).eval()
    for a, b in zip(_hf_outputs(back, x), (ref_logits, ref_boxes), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_pixel_mask_follows_each_images_geometry(hf_folder):
    folder, hf = hf_folder
    model = init(options={"hf": folder}, img_size=128).build()
    h, w = model.input_shape[1:]
    wide = model.transform.geometry(w, h // 2)  # fills the width, half the height
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        logits, _ = model(x, [wide])
    mask = torch.zeros(1, h, w, dtype=torch.long)
    mask[:, :h // 2, :] = 1
    ref_logits, _ = _hf_outputs(hf, x, mask)
    torch.testing.assert_close(logits[:, -1], ref_logits, atol=1e-5, rtol=0)
    unmasked, _ = _hf_outputs(hf, x)
    assert (ref_logits - unmasked).abs().max() > 1e-3  # the mask really changes the outputs


@pytest.mark.parametrize(("change", "message"), [
    ("no-config", "no config.json"),
    ("other-architecture", "not Deformable DETR"),
    ("mismatched", "do not fit config.json"),
    ("pickle", "no model.safetensors"),
])
def test_bad_folders_get_one_line_errors_and_no_file(hf_folder, tmp_path, runner, change,
                                                     message):
    import json
    import shutil

    folder, _ = hf_folder
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    if change == "no-config":
        (bad / "config.json").unlink()
    elif change == "other-architecture":
        config["model_type"] = "detr"
        (bad / "config.json").write_text(json.dumps(config))
    elif change == "mismatched":
        config["encoder_ffn_dim"] = 96
        (bad / "config.json").write_text(json.dumps(config))
    else:
        (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    out = tmp_path / "out.st"
    result = runner.invoke(app, ["init", "--hf", str(bad), "-o", str(out)])
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert not out.exists()


def test_compacted_models_refuse_hf_export_and_reload_at_their_widths(tmp_path):
    ck = score(init("deformable-detr-small", names=CLASSES, img_size=64), "l1-filter")
    small = mask(ck, PruneConfig(0.5, granularity="filter", compact=True))
    widths = small.arch["widths"]
    assert widths and all(v < 256 for k, v in widths.items() if k.endswith(".mlp"))
    path = tmp_path / "small.st"
    checkpoint.save(small, path)
    again = checkpoint.load(path).build()  # rebuilt at the recorded widths
    assert sum(p.numel() for p in again.parameters()) < sum(
        p.numel() for p in ck.build().parameters())
    with pytest.raises(PrunekitError, match="compacted"):
        export(small, tmp_path / "hf", fmt="hf")
    assert not (tmp_path / "hf").exists()
    masked = mask(ck, PruneConfig(0.5, granularity="filter"))
    export(masked, tmp_path / "hf-masked", fmt="hf")  # a masked model keeps HF's widths: it exports
    assert (tmp_path / "hf-masked" / "model.safetensors").exists()


def test_deeplift_is_refused_with_the_reason():
    ck = init("deformable-detr-small", names=CLASSES, img_size=64)
    with pytest.raises(PrunekitError, match="DeepLIFT cannot be right for Deformable DETR"):
        score(ck, ScoreConfig(method="deeplift", data="unused.json"))


def test_nothing_reaches_the_network(hf_folder, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    folder, _ = hf_folder
    ck = init("deformable-detr-small", names=CLASSES, img_size=64)
    imported = init(options={"hf": folder}, img_size=64)
    export(imported, tmp_path / "back", fmt="hf")
    x = torch.rand(1, *ck.build().input_shape)
    with torch.no_grad():
        ck.build()(x)


@pytest.mark.slow
def test_full_model_compacted_equals_masked_at_half():
    ck = score(init("deformable-detr", classes=3, img_size=256), "l1-filter")
    masked = mask(ck, PruneConfig(0.5, granularity="filter"))
    small = mask(ck, PruneConfig(0.5, granularity="filter", compact=True))
    m_masked, m_small = masked.build(), small.build()
    x = torch.rand(1, *m_masked.input_shape)
    with torch.no_grad():
        for a, b in zip(m_masked(x), m_small(x), strict=True):
            assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


@pytest.mark.parametrize("relu", [False, True])
def test_onednn_linear_is_the_linear_it_replaces(relu):
    """One oneDNN primitive without gradients, PyTorch's linear (and ReLU) with them: the same
    outputs either way, and the gradients of the layer it replaces."""
    from prunekit.models.deformable_detr.deploy import OneDnnLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    fused = OneDnnLinear(linear, relu=relu)
    assert fused.weight is linear.weight and fused.bias is linear.bias
    x = torch.randn(2, 7, 24)
    expected = linear(x).relu() if relu else linear(x)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(fused(x).square().sum(), linear.weight)
    (ref,) = torch.autograd.grad(expected.square().sum(), linear.weight)
    torch.testing.assert_close(grad, ref)


def test_onednn_linear_repacks_a_changed_weight_and_copies_without_its_pack():
    """The weight oneDNN reads is packed once and kept: a weight changed in place is packed
    again (never a stale product), another row count reads the same pack, and a deep copy or a
    pickle (the pack is an opaque oneDNN tensor) packs its own on its first call."""
    import copy
    import pickle

    from prunekit.models.deformable_detr import deploy

    if not deploy._onednn_linear():
        pytest.skip("PyTorch without oneDNN's linear")
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 48)
    fused = deploy.OneDnnLinear(linear)
    with torch.no_grad():
        for rows in (9, 1, 300):
            x = torch.randn(rows, 32)
            torch.testing.assert_close(fused(x), linear(x), atol=1e-5, rtol=1e-5)
        pack = fused._packed[1]
        assert pack.is_mkldnn and fused(x) is not None and fused._packed[1] is pack
        linear.weight.mul_(-2.0)
        torch.testing.assert_close(fused(x), linear(x), atol=1e-5, rtol=1e-5)
        assert fused._packed[1] is not pack
        for twin in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
            assert twin._packed is None
            torch.testing.assert_close(twin(x), linear(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampling", ["kernel", "gather"])
def test_deployed_form_gives_the_same_outputs(sampling, monkeypatch):
    """BatchNorm folded and the deformable sampling through the kernel, or as one weighted
    gather where the kernel cannot run (no grid_sample either way), and each encoder layer's
    residual sums normalised in one pass: the outputs stay the model's, sampling points off
    the map included."""
    from prunekit.models.deformable_detr import kernel
    from prunekit.models.deformable_detr.deploy import GatherSampling, OneDnnLinear

    torch.manual_seed(0)
    model = init("deformable-detr-small", names=CLASSES, img_size=96).build().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sampling_offsets.weight" in name:  # offsets that reach past the maps' edges
                p.normal_(0, 0.2)
            elif name.endswith("normalization.weight"):
                p.uniform_(0.5, 1.5)
            elif "layer_norm" in name:  # each norm its own scale and shift
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    deployed = model.deployed()
    assert any(isinstance(m, GatherSampling) for m in deployed.modules())
    linears = [m for m in deployed.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, OneDnnLinear) for m in linears)
    assert sum(m.relu for m in linears) == 4  # each feed-forward's first layer with its ReLU
    x = torch.rand(2, 3, *model.input_shape[1:])
    fused, softmaxed = [], []
    add_norm, sample_offsets = kernel.add_norm, kernel.sample_offsets
    monkeypatch.setattr(kernel, "add_norm", lambda *a: fused.append(1) or add_norm(*a))
    monkeypatch.setattr(kernel, "sample_offsets", lambda *a, logits=False: softmaxed.append(
        logits) or sample_offsets(*a, logits=logits))
    with torch.no_grad():
        expected = model(x)
        if sampling == "gather":
            monkeypatch.setattr(kernel, "usable", lambda *tensors: False)
        for a, b in zip(expected, deployed(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        # Each encoder layer's two residual sums and their norms go through one function,
        # and the kernel softmaxes its attention logits.
        assert len(fused) == 2 * model.detr.config.encoder_layers
        assert softmaxed.count(True) == (
            model.detr.config.encoder_layers if sampling == "kernel" else 0)
        # Padding that differs by image: the encoder's value map is zeroed there.
        h, w = model.input_shape[1:]
        mask = torch.ones(2, h, w, dtype=torch.long)
        mask[0, :, w // 2:] = 0
        mask[1, h // 3:, :] = 0
        for a, b in zip(model.forward_masked(x, mask), deployed.forward_masked(x, mask),
                        strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        fused.clear()
        deployed.train()  # dropout: the layers' own forward
        deployed(x)
        assert not fused


def test_fused_norms_leave_an_encoder_layer_of_another_shape(monkeypatch):
    """An encoder layer whose forward takes other arguments (another transformers) keeps its
    own forward; the installed one gets the fused one."""
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrEncoderLayer,
    )

    from prunekit.models.deformable_detr.deploy import fused_norms

    model = init("deformable-detr-small", names=CLASSES, img_size=96).build().eval()
    layers = [m for m in model.modules() if isinstance(m, DeformableDetrEncoderLayer)]
    assert layers and not any("forward" in m.__dict__ for m in layers)

    def other(self, hidden_states, attention_mask, position_embeddings=None, **kwargs):
        raise AssertionError("not called")

    monkeypatch.setattr(DeformableDetrEncoderLayer, "forward", other)
    fused_norms(model)
    assert not any("forward" in m.__dict__ for m in layers)
    monkeypatch.undo()
    fused_norms(model)
    assert all("forward" in m.__dict__ for m in layers)


@pytest.mark.parametrize("refine", [False, True])  # point references (the reference's), boxes
def test_deployed_decoder_projects_its_samples(refine, tmp_path, monkeypatch):
    """Where few queries sample many positions, the deployed attention samples the unprojected
    map and projects the samples: the outputs stay the model's, with point and box references,
    value biases, sampling points off the map and padding masks that differ by image."""
    from prunekit.models.deformable_detr import deploy

    hf = _hf_model(with_box_refine=refine)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "sampling_offsets.weight" in name:  # offsets that reach past the maps' edges
                p.normal_(0, 0.2)
            elif "value_proj.bias" in name:  # weights off the map must not take their bias
                p.normal_(0, 1.0)
    hf.save_pretrained(tmp_path / "detr")
    model = init(options={"hf": tmp_path / "detr"}, img_size=96).build().eval()
    chosen = []
    monkeypatch.setattr(deploy, "_samples_first",
                        lambda queries, positions, *rest: chosen.append(queries) or True)
    deployed = model.deployed()
    x = torch.rand(2, 3, *model.input_shape[1:])
    h, w = model.input_shape[1:]
    mask = torch.ones(2, h, w, dtype=torch.long)
    mask[1, h // 3:, :] = 0
    mask[0, :, w // 2:] = 0
    with torch.no_grad():
        for pixel_mask in (None, mask):
            expected = model.forward_masked(x, pixel_mask)
            for a, b in zip(expected, deployed.forward_masked(x, pixel_mask), strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert chosen.count(20) == 2 * 2  # both decoder layers (20 queries), both calls
    # With gradients to the image (an attack's), the projection stays before the sampling.
    chosen.clear()
    images = x.clone().requires_grad_()
    deployed.forward_masked(images, None)[0].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0 and not chosen


def test_samples_are_projected_only_where_that_is_less_work():
    """The reference model at 375 x 1242: its decoder (300 queries) samples the encoder's
    unprojected 9,792 positions; its encoder, whose queries are those positions, does not."""
    from prunekit.models.deformable_detr.deploy import _samples_first

    assert _samples_first(300, 9792, 8, 16, 256)
    assert not _samples_first(9792, 9792, 8, 16, 256)


def test_deployed_position_embeddings_follow_the_mask_and_shape():
    """The deployed model keeps its position embeddings from one call to the next, and only
    while the padding mask and the shape are the same: letterboxed batches with other masks,
    and another batch size, give the undeployed model's outputs, in and out of inference
    mode."""
    from prunekit.models.deformable_detr.deploy import CachedPositions

    torch.manual_seed(0)
    model = init("deformable-detr-small", names=CLASSES, img_size=96).build().eval()
    deployed = model.deployed()
    cached = [m for m in deployed.modules() if isinstance(m, CachedPositions)]
    assert len(cached) == 1
    x = torch.rand(2, 3, *model.input_shape[1:])
    h, w = model.input_shape[1:]
    full = torch.ones(2, h, w, dtype=torch.long)
    right = full.clone()
    right[:, :, w // 2:] = 0
    below = full.clone()
    below[1, h // 3:, :] = 0
    # One entry per level's shape: the third call computes again (the entry holds the last
    # mask), the last one is served from the cache.
    calls = [(x, full), (x, right), (x, full), (x, below), (x[:1], full[:1]), (x, below)]
    computed = []
    cached[0].embedding.register_forward_hook(lambda *_: computed.append(1))
    levels = model.detr.config.num_feature_levels
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            for k, (images, mask) in enumerate(calls):
                before = len(computed)
                expected = model.forward_masked(images, mask)
                for a, b in zip(expected, deployed.forward_masked(images, mask), strict=True):
                    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
                assert len(computed) - before == (0 if k == len(calls) - 1 else levels)
