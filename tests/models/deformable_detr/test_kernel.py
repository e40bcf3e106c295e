"""The compiled deformable-sampling kernel against HF's grid_sample path: values and all three
gradients, in double precision (where both are exact arithmetic on the same formula) and in
float; the model through it; and HF's path when no compiler is there."""

from __future__ import annotations

import shutil

import pytest
import torch

from prunekit.init import init
from prunekit.models.deformable_detr import kernel

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def _hf():
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        MultiScaleDeformableAttention,
    )

    return MultiScaleDeformableAttention()


def _inputs(dtype, *, batch=3, heads=2, width=8, queries=29, points=3,
            shapes=((9, 14), (5, 7), (3, 4), (1, 2))):
    g = torch.Generator().manual_seed(0)
    positions = sum(h * w for h, w in shapes)
    value = torch.randn(batch, positions, heads, width, generator=g, dtype=dtype)
    # Locations from a little before the maps to a little past them: corners off the map
    # (zero padding) and points wholly outside are both exercised.
    loc = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g,
                     dtype=dtype) * 1.4 - 0.2
    attn = torch.rand(batch, queries, heads, len(shapes), points, generator=g, dtype=dtype)
    return value, list(shapes), loc, attn


def _run(fn, value, shapes, loc, attn, grad):
    value, loc, attn = (t.clone().requires_grad_() for t in (value, loc, attn))
    out = fn(value, shapes, loc, attn)
    grads = torch.autograd.grad((out * grad).sum(), (value, loc, attn))
    return out, grads


def _hf_sample(value, shapes, loc, attn):
    starts = torch.tensor([0] + [h * w for h, w in shapes]).cumsum(0)[:-1]
    return _hf()(value, torch.tensor(shapes), shapes, starts, loc, attn, 64)


# the generic loop, the head widths unrolled, and the model widths the decoder samples whole
@pytest.mark.parametrize("width", [8, 16, 32, 64, 256])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_kernel_equals_hfs_grid_sample_path_with_gradients(dtype, tol, width):
    value, shapes, loc, attn = _inputs(dtype, width=width)
    assert kernel.usable(value, loc, attn)
    b, q, h = loc.shape[:3]
    grad = torch.randn(b, q, h * value.shape[-1], dtype=dtype,
                       generator=torch.Generator().manual_seed(1))
    ref, ref_grads = _run(_hf_sample, value, shapes, loc, attn, grad)
    out, grads = _run(kernel.sample, value, shapes, loc, attn, grad)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    for name, a, r in zip(("value", "locations", "weights"), grads, ref_grads, strict=True):
        # Location gradients are in map pixels per unit fraction: scale the tolerance.
        scale = max(1.0, float(r.abs().max()))
        torch.testing.assert_close(a, r, atol=tol * scale, rtol=tol, msg=name)
    # Points wholly off the map contribute nothing and get zero gradients.
    outside = ((loc < -1 / 9) | (loc > 1 + 1 / 9)).any(-1)[:, :, :, 0]
    assert outside.any()
    assert (grads[2][:, :, :, 0][outside] == 0).all()


def test_kernel_gradients_pass_gradcheck():
    value, shapes, loc, attn = _inputs(torch.float64, batch=2, heads=2, width=3, queries=5,
                                       points=2, shapes=((4, 5), (2, 3)))
    value, loc, attn = (t.requires_grad_() for t in (value, loc, attn))
    assert torch.autograd.gradcheck(lambda v, xy, a: kernel.sample(v, shapes, xy, a),
                                    (value, loc, attn), eps=1e-6, atol=1e-5)


def test_pixel_coordinates_give_the_same_samples_without_gradients():
    value, shapes, loc, attn = _inputs(torch.float64)
    size = torch.tensor(shapes, dtype=torch.float64).flip(-1).view(1, 1, 1, len(shapes), 1, 2)
    pixels = loc * size - 0.5
    with torch.no_grad():
        torch.testing.assert_close(kernel.sample_pixels(value, shapes, pixels, attn),
                                   kernel.sample(value, shapes, loc, attn), atol=1e-12,
                                   rtol=1e-12)
    with pytest.raises(RuntimeError, match="no backward"):
        kernel.sample_pixels(value.requires_grad_(), shapes, pixels, attn)


@pytest.mark.parametrize("points", [3, 17])  # 12 and 68 sampling points a row
@pytest.mark.parametrize("width", [8, 16, 32])  # the kernel's generic loop and its unrolled two
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_offsets_from_references_give_the_same_samples(dtype, width, points):
    """The deployed encoder's call: the kernel adds each offset to its level's reference, and
    gives the same bits as sample_pixels on the sums (and HF's path's numbers), off-map points
    and corners included."""
    value, shapes, loc, attn = _inputs(dtype, width=width, points=points)
    b, q, h, levels, points, _ = loc.shape
    g = torch.Generator().manual_seed(2)
    size = torch.tensor(shapes, dtype=dtype).flip(-1).view(1, 1, levels, 2)
    reference = torch.rand(b, q, levels, 2, generator=g, dtype=dtype) * size - 0.5
    offsets = torch.randn(b, q, h, levels, points, 2, generator=g, dtype=dtype) * 3
    pixels = reference[:, :, None, :, None] + offsets
    assert ((pixels < -1) | (pixels > size[:, :, None, :, None])).any()  # points off the map
    assert ((pixels > -1) & (pixels < 0)).any()  # inside, with corners off the map
    with torch.no_grad():
        out = kernel.sample_offsets(value, shapes, reference, offsets, attn)
        assert torch.equal(out, kernel.sample_pixels(value, shapes, pixels, attn))
        ref = _hf_sample(value, shapes, (pixels + 0.5) / size[:, :, None, :, None], attn)
        torch.testing.assert_close(out, ref, **({"atol": 1e-5, "rtol": 1e-5}
                                                if dtype == torch.float32 else {}))
    with pytest.raises(RuntimeError, match="no backward"):
        kernel.sample_offsets(value, shapes, reference, offsets, attn.requires_grad_())


@pytest.mark.parametrize("points", [3, 4, 8])  # 12 (lane by lane), 16 and 32 logits a row
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_kernel_softmaxes_logits_as_it_reads_them(dtype, points):
    """The deployed encoder's call with the attention layer's logits: the same samples as with
    PyTorch's softmax of them, over each (query, head)'s levels × points, for logits far
    apart (weights that underflow to 0), all equal, and one far above the rest."""
    value, shapes, loc, _ = _inputs(dtype, width=16, points=points, queries=41)
    b, q, h, levels, points, _ = loc.shape
    g = torch.Generator().manual_seed(3)
    size = torch.tensor(shapes, dtype=dtype).flip(-1).view(1, 1, levels, 2)
    reference = torch.rand(b, q, levels, 2, generator=g, dtype=dtype) * size - 0.5
    offsets = torch.randn(b, q, h, levels, points, 2, generator=g, dtype=dtype) * 3
    logits = torch.randn(b, q, h, levels, points, generator=g, dtype=dtype) * 4
    logits[0, 0] = 7.5  # all equal
    logits[0, 1, 0, 0, 0] = 1000.0  # one weight of 1, the others underflowing
    logits[1, 2] *= 30  # spread over about ±400
    weights = torch.softmax(logits.view(b, q, h, -1), -1).view_as(logits)
    assert (weights == 0).any() and (weights == 1).any()
    with torch.no_grad():
        out = kernel.sample_offsets(value, shapes, reference, offsets, logits, logits=True)
        expected = kernel.sample_offsets(value, shapes, reference, offsets, weights)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(out, expected, **tolerance)
    assert not torch.equal(out, kernel.sample_offsets(value, shapes, reference, offsets,
                                                      logits))  # the flag is read


def test_wide_heads_take_hfs_path():
    value, shapes, loc, attn = _inputs(torch.float32, width=kernel.MAX_WIDTH + 1, queries=2)
    assert not kernel.usable(value, loc, attn)
    assert kernel.usable(value[..., :kernel.MAX_WIDTH], loc, attn)


def test_model_runs_the_kernel_and_matches_hfs_path():
    """deformable-detr-small through the kernel: outputs and input gradients (what attacks
    use) equal to the same model through HF's module."""
    torch.manual_seed(0)
    model = init("deformable-detr-small", names=CLASSES, img_size=96).build().eval()
    assert sum(isinstance(m, kernel.KernelSampling) for m in model.modules()) == 4
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sampling_offsets.weight" in name:  # offsets past the maps' edges
                p.normal_(0, 0.2)
    x = torch.rand(2, 3, *model.input_shape[1:], requires_grad=True)
    out = model(x)
    (gx,) = torch.autograd.grad(out[0].sum() + out[1].sum(), x)
    kernel.install(model, kernel=False)
    assert not any(isinstance(m, kernel.KernelSampling) for m in model.modules())
    ref = model(x)
    (ref_gx,) = torch.autograd.grad(ref[0].sum() + ref[1].sum(), x)
    for a, r in zip(out, ref, strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, ref_gx, atol=1e-5, rtol=1e-4)


def test_without_a_compiler_hfs_path_runs_after_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernel, "_loaded", {})
    value, shapes, loc, attn = _inputs(torch.float32)
    assert not kernel.usable(value, loc, attn)
    assert not kernel.usable(value, loc, attn)  # decided once
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not build" in err[0] and "grid_sample" in err[0]
    starts = torch.tensor([0] + [h * w for h, w in shapes]).cumsum(0)[:-1]
    sampled = kernel.KernelSampling()(value, torch.tensor(shapes), shapes, starts, loc, attn)
    torch.testing.assert_close(sampled, _hf_sample(value, shapes, loc, attn))
    assert not list((tmp_path / "cache").glob("*.so"))


def test_kernel_builds_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(kernel, "_loaded", {})
    assert kernel.library() is not None
    built = list(tmp_path.glob("msda-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("tmp*"))
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(kernel, "_loaded", {})
    assert kernel.library() is not None
    assert built[0].stat().st_mtime_ns == mtime


def _mapped_openmp() -> set[str]:
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if "libgomp" in line or "libiomp" in line}


@pytest.mark.parametrize("own_threads", [False, True])
def test_threads_change_nothing_and_openmp_is_pytorchs(tmp_path, monkeypatch, own_threads):
    """One, two and three threads give the same bits forward and backward (rows and (batch,
    head) pairs are split, never sums), with the kernel on PyTorch's OpenMP threads and on
    threads of its own; built for OpenMP, the library links the libgomp PyTorch loaded, no
    second runtime."""
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(kernel, "_loaded", {})
    if own_threads:
        monkeypatch.setattr(kernel, "openmp", lambda: False)
    before = _mapped_openmp()
    assert kernel.library() is not None
    if kernel.openmp():
        assert len(before) == 1 and _mapped_openmp() == before
    value, shapes, loc, attn = _inputs(torch.float32, batch=2, heads=3, width=16, queries=41)
    grad = torch.randn(2, 41, 48, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append(_run(kernel.sample, value, shapes, loc, attn, grad))
    finally:
        torch.set_num_threads(threads)
    (out, grads), rest = runs[0], runs[1:]
    for other, other_grads in rest:
        assert torch.equal(out, other)
        assert all(torch.equal(a, b) for a, b in zip(grads, other_grads, strict=True))


def test_a_gcc_without_openmp_builds_the_kernel_without_it(tmp_path, monkeypatch, capsys):
    """A GCC whose ``-fopenmp`` fails (no libgomp to link) still builds the kernel, with threads
    of its own, and says nothing: the OpenMP build is a speed-up, not a requirement, and one
    failure is remembered in the cache rather than paid by every process."""
    if not kernel.openmp():
        pytest.skip("PyTorch's threads are not GNU OpenMP's here")
    fake = tmp_path / "fake-g++"
    tried = tmp_path / "tried"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && '
                    f'{{ echo >> {tried}; echo "cannot find -lgomp" >&2; exit 1; }}; done\n'
                    f'exec {shutil.which("g++")} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernel, "_loaded", {})
    assert kernel._flag_sets(str(fake))[0][-1] == "-DPRUNEKIT_OPENMP"  # tried first
    value, shapes, loc, attn = _inputs(torch.float32)
    assert kernel.usable(value, loc, attn)
    assert capsys.readouterr().err == ""
    assert len(list((tmp_path / "cache").glob("msda-*.so"))) == 1
    torch.testing.assert_close(kernel.sample(value, shapes, loc, attn),
                               _hf_sample(value, shapes, loc, attn), atol=2e-5, rtol=2e-5)
    monkeypatch.setattr(kernel, "_loaded", {})  # the next process: no second OpenMP attempt
    assert kernel.library() is not None
    assert tried.read_text().count("\n") == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [256, 48, 7])  # a compile-time width, a run-time one, a tail
def test_add_norm_is_the_layer_norm_of_the_sum(dtype, width):
    """The residual sum normalised in one pass equals PyTorch's addition then layer norm, with
    any number of threads giving the same bits; with gradients, or a norm without weight and
    bias, PyTorch's own two operators run (the gradients are theirs)."""
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.LayerNorm(width, eps=1e-3).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
    # Rows far from zero mean and unit variance, so a wrong mean or variance shows.
    x = torch.randn(2, 37, width, generator=g, dtype=dtype) * 4 + 3
    residual = torch.randn(2, 37, width, generator=g, dtype=dtype)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    with torch.no_grad():
        expected = norm(x + residual)
        threads = torch.get_num_threads()
        try:
            runs = []
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                runs.append(kernel.add_norm(x, residual, norm))
        finally:
            torch.set_num_threads(threads)
        torch.testing.assert_close(runs[0], expected, atol=tol, rtol=tol)
        assert all(torch.equal(runs[0], other) for other in runs[1:])
        plain = torch.nn.LayerNorm(width, elementwise_affine=False).to(dtype)
        assert torch.equal(kernel.add_norm(x, residual, plain), plain(x + residual))
    x = x.clone().requires_grad_()
    kernel.add_norm(x, residual, norm).sum().backward()
    assert x.grad is not None and norm.weight.grad is not None
