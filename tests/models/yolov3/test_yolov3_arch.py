"""The YOLOv3 family: exact sizes, outputs, and the Darknet .cfg building the same modules."""

from __future__ import annotations

import pytest
import torch

from prunekit.bench import count_macs
from prunekit.models.yolov3.arch import build_arch
from prunekit.models.yolov3.boxes import predictions
from prunekit.models.yolov3.darknet import parse_cfg
from tests.conftest import fixture_path, yolo


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "params", "macs", "shapes"),
    [
        ("yolov3", 61_949_149, 32_932_037_632, [(1, 255, 13, 13), (1, 255, 26, 26),
                                                 (1, 255, 52, 52)]),
        ("yolov3-tiny", 8_852_366, 2_782_480_896, [(1, 255, 13, 13), (1, 255, 26, 26)]),
    ],
)
def test_family_sizes_at_416(name, params, macs, shapes):
    model = yolo(name, 80).eval()
    assert _params(model) == params
    assert count_macs(model)[0] == macs
    with torch.no_grad():
        out = model(torch.rand(1, 3, 416, 416))
    assert [tuple(o.shape) for o in out] == shapes


def test_small_member_has_three_heads_at_160():
    model = yolo("yolov3-small", 6, 160).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 160, 160))
    assert [tuple(o.shape) for o in out] == [(2, 33, 5, 5), (2, 33, 10, 10), (2, 33, 20, 20)]
    assert 1_500_000 < _params(model) < 3_000_000


def test_every_nonlinearity_is_its_own_module():
    model = yolo("yolov3", 80)
    acts = [m for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == 72  # 75 convs, three of them linear heads
    assert len({id(a) for a in acts}) == len(acts)


@pytest.mark.parametrize("name", ["yolov3", "yolov3-tiny"])
def test_cfg_builds_the_same_model(name):
    arch, size = parse_cfg(fixture_path("darknet", f"{name}.cfg"))
    assert size == 416
    assert arch["layers"] == build_arch(name, 80)["layers"]
    from_cfg = yolo(name, 80, arch=arch).eval()
    builtin = yolo(name, 80).eval()
    assert _params(from_cfg) == _params(builtin)
    torch.manual_seed(1)
    for t in builtin.state_dict().values():
        if t.is_floating_point():
            t.copy_(torch.randn_like(t) * 0.05 + (1.0 if t.ndim == 1 else 0.0))
    from_cfg.load_state_dict(builtin.state_dict())
    x = torch.rand(1, 3, 416, 416)
    with torch.no_grad():
        for a, b in zip(from_cfg(x), builtin(x), strict=True):
            assert torch.equal(a, b)


def test_decode_matches_the_yolo_formula():
    model = yolo("yolov3-tiny", 2, 64).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
        boxes = predictions(out, model.anchors(), 64, 2)
    head = out[0].view(1, 3, 7, 2, 2).permute(0, 1, 3, 4, 2)  # 2×2 grid, stride 32
    t = head[0, 1, 1, 0]  # anchor 1 of the first head, row 1, column 0
    anchor = torch.tensor(model.arch["anchors"][model.arch["layers"][16]["mask"][1]])
    expect_xy = (t[:2].sigmoid() + torch.tensor([0.0, 1.0])) * 32
    expect_wh = t[2:4].exp() * anchor
    row = boxes[0, 1 * 4 + 1 * 2 + 0]
    assert torch.allclose(row[:2], expect_xy)
    assert torch.allclose(row[2:4], expect_wh)
    assert torch.allclose(row[4:], t[4:].sigmoid())


def test_bad_cfg_names_the_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\nwidth=416\nheight=416\n[convolutional]\nfilters=16\nsize=3\n"
                   "activation=leaky\n[mystery]\nx=1\n")
    with pytest.raises(Exception, match=r"bad.cfg:8: section \[mystery\]"):
        parse_cfg(cfg)


def test_grey_model_sees_only_luma():
    from prunekit.models.base import GREY_WEIGHTS

    model = yolo("yolov3-tiny", 3, 64, "grey").eval()
    x = torch.rand(2, 3, 64, 64)
    w = torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1)
    grey = (x * w).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    with torch.no_grad():
        for a, b in zip(model(x), model(grey), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
        # and colour really is gone: a hue change at equal luma changes nothing
        swapped = x[:, [2, 1, 0]]
        same_luma = swapped + ((x - swapped) * w).sum(1, keepdim=True)
        for a, b in zip(model(x), model(same_luma), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    colour = yolo("yolov3-tiny", 3, 64).eval()
    colour.load_state_dict(model.state_dict())
    with torch.no_grad():
        # the same weights with colour input do see the difference
        first = colour.layers[0]
        assert (first(x) - first(grey)).abs().max() > 1e-2
