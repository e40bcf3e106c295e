"""The letterbox: geometry that maps boxes back, grey centred padding, one implementation for
datasets (uint8) and attacks (differentiable floats)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.models.base import Geometry
from prunekit.models.yolov3.transform import Letterbox


@settings(max_examples=60, deadline=None)
@given(w=st.integers(8, 900), h=st.integers(8, 900), size=st.sampled_from([64, 160, 416]),
       data=st.data())
def test_letterbox_round_trip_maps_boxes_back(w, h, size, data):
    xs = sorted(data.draw(st.lists(st.floats(0, w), min_size=2, max_size=2)))
    ys = sorted(data.draw(st.lists(st.floats(0, h), min_size=2, max_size=2)))
    box = torch.tensor([[xs[0], ys[0], xs[1], ys[1]]], dtype=torch.float64)
    transform = Letterbox(size)
    geometry = transform.geometry(w, h)
    moved = geometry.to_input(box)
    side = max(w, h)
    # the box lands where padding then resizing puts it
    offset = torch.tensor([(side - w) // 2, (side - h) // 2] * 2, dtype=torch.float64)
    assert torch.allclose(moved, (box + offset) * size / side, atol=1e-6)
    assert torch.allclose(geometry.to_original(moved), box, atol=1e-4)
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    assert transform.image(image).shape == (3, size, size)


def test_letterbox_pads_with_grey_and_centres():
    transform = Letterbox(100)
    image = torch.full((3, 50, 100), 7, dtype=torch.uint8)
    out = transform.image(image)
    assert transform.geometry(100, 50) == Geometry(100, 50, 1.0, 0.0, 25.0)
    assert (out[:, :25] == 114).all() and (out[:, 75:] == 114).all()
    assert (out[:, 25:75] == 7).all()


def test_float_letterbox_is_differentiable_and_matches_the_uint8_one():
    transform = Letterbox(64)
    image = torch.randint(0, 256, (3, 48, 100), dtype=torch.uint8)
    x = (image.float() / 255).unsqueeze(0).requires_grad_()
    out = transform(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.abs().sum() > 0
    assert torch.equal(transform.image(image),
                       (out[0].detach() * 255).round().clamp(0, 255).to(torch.uint8))


def test_same_size_square_images_pass_untouched():
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    assert Letterbox(64).image(image) is image
