"""Deformable DETR as deployed: every backbone BatchNorm folded into its convolution, and the
deformable sampling as one weighted gather instead of ``grid_sample``.

HF's pure-PyTorch multi-scale deformable attention samples every level with ``grid_sample``,
stacks the samples of all levels and points (heads × head width × queries × levels × points
floats: 160 MB per encoder layer of the reference model at 375 × 1242) and then weights and sums
them. On a CPU that took 55 % of the reference model's time against 1.3 % of its
multiply–accumulates, time that filter pruning cannot shrink. The same numbers come from one
``embedding_bag``: each query's output is a weighted sum of value rows, the four bilinear
corners of each sampling point, weighted by the bilinear weight times the attention weight
(corners outside the map weigh 0, as ``grid_sample``'s zero padding; ``align_corners=False``
geometry). Nothing of size queries × samples × channels is ever built.

Where prunekit's compiled sampling kernel runs (:mod:`prunekit.models.deformable_detr.kernel`)
it samples instead, the encoder's points given to it in pixels: on the reference model at
375 × 1242 (batch 1, two threads) an encoder layer's sampling takes 6 ms there against about
40 ms for the gather and its index arithmetic. The gather remains for TorchScript traces (the
``onednn-graph`` runtime) and machines without a C++ compiler.

Where the kernel runs, the decoder's cross-attention also reverses the order of its value
projection and its sampling (:func:`_project_samples`): each of the six decoder layers of the
reference model projected all 9,792 encoder positions (0.64 G multiply–accumulates, about 6.5
ms) for 300 queries to sample a few of them. The outputs are the same to float rounding; the
multiply–accumulates that ``bench`` counts stay the model's (HF's arithmetic), so the deployed
form does about 3.5 G fewer of them than counted at 375 × 1242 (net of its wider sampling), in
a pruned model as in the dense one.

Each encoder layer adds its two residuals and normalises the sums in one pass of the same
library (:func:`kernel.add_norm`), where the model has two passes over every position, and
its sampling takes the attention logits, softmaxed as the kernel reads them: HF's softmax
was one more pass over the weights (about 1.1 ms of each encoder layer inside the reference
model, as long in a pruned model as in the dense one). The encoder's attention layers then
return no attention weights; nothing in the deployed model reads them.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.models.deformable_detr import kernel


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` (a copy, in eval mode) with each ``convolution`` → ``normalization`` pair of
    its ResNet layers and shortcuts folded into one convolution; same outputs to float
    rounding."""
    for m in model.modules():
        conv, norm = getattr(m, "convolution", None), getattr(m, "normalization", None)
        if not isinstance(conv, nn.Conv2d) or norm is None or isinstance(norm, nn.Identity):
            continue
        eps = getattr(norm, "eps", 1e-5)
        with torch.no_grad():
            scale = norm.weight * (norm.running_var + eps).rsqrt()
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                              conv.stride, conv.padding, conv.dilation, conv.groups, True,
                              conv.padding_mode, device=conv.weight.device)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
        m.convolution, m.normalization = fused, nn.Identity()
    return model


def gather_sample(value: Tensor, shapes: list[tuple[int, int]], x: Tensor, y: Tensor,
                  attn: Tensor) -> Tensor:
    """The attention-weighted bilinear samples of ``value`` (batch × positions × heads ×
    width), one ``embedding_bag`` sum per (batch, head, query).

    Args:
        value: the flattened value maps of every level.
        shapes: each level's (height, width).
        x: sampling columns in pixels, as ``grid_sample`` places them (``align_corners=False``),
            batch × heads × queries × levels × points.
        y: sampling rows, the same.
        attn: attention weights, the same.

    Returns:
        batch × queries × (heads · width), as HF's attention returns it.
    """
    b, s, heads, dim = value.shape
    q, levels = x.shape[2], x.shape[3]
    hw = x.new_tensor(shapes).view(1, 1, 1, levels, 2)
    h, w = hw[..., 0:1], hw[..., 1:2]
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    in_x0 = ((x0 >= 0) & (x0 < w)).to(x.dtype)
    in_x1 = ((x0 >= -1) & (x0 < w - 1)).to(x.dtype)
    in_y0 = ((y0 >= 0) & (y0 < h)).to(x.dtype)
    in_y1 = ((y0 >= -1) & (y0 < h - 1)).to(x.dtype)
    wx0, wx1 = (1 - fx) * in_x0, fx * in_x1
    wy0, wy1 = (1 - fy) * in_y0 * attn, fy * in_y1 * attn
    weight = torch.stack((wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1), -1)
    starts = [0]
    for hh, ww in shapes[:-1]:
        starts.append(starts[-1] + hh * ww)
    # Rows of the value table (batch × heads × positions), as int32: half the traffic of int64
    # on the largest index tensor, and embedding_bag takes either.
    row = (torch.arange(b * heads, device=value.device, dtype=torch.int32) * s) \
        .view(b, heads, 1, 1, 1)
    offset = x.new_tensor(starts).view(1, 1, 1, levels, 1)
    base = row + (y0 * w + x0 + offset).to(torch.int32)
    wi = w.to(torch.int32)
    # A corner off the map weighs 0; any row of the table will do for it.
    index = torch.stack((base, base + 1, base + wi, base + wi + 1), -1) \
        .clamp_(0, b * heads * s - 1)
    table = value.permute(0, 2, 1, 3).reshape(b * heads * s, dim)
    out = F.embedding_bag(index.view(b * heads * q, -1), table,
                          per_sample_weights=weight.view(b * heads * q, -1).to(table.dtype),
                          mode="sum")
    return out.view(b, heads, q, dim).permute(0, 2, 1, 3).reshape(b, q, heads * dim)


class GatherSampling(nn.Module):
    """A drop-in for HF's ``MultiScaleDeformableAttention`` (same arguments, same output):
    prunekit's sampling kernel where it runs, one weighted gather elsewhere (no compiler, a
    TorchScript trace)."""

    def forward(self, value: Tensor, value_spatial_shapes: Tensor,
                value_spatial_shapes_list: list[tuple[int, int]], level_start_index: Tensor,
                sampling_locations: Tensor, attention_weights: Tensor,
                im2col_step: int = 64) -> Tensor:
        if kernel.usable(value, sampling_locations, attention_weights):
            return kernel.sample(value, value_spatial_shapes_list, sampling_locations,
                                 attention_weights)
        levels = sampling_locations.shape[3]
        loc = sampling_locations.permute(0, 2, 1, 3, 4, 5)
        hw = loc.new_tensor(value_spatial_shapes_list).view(1, 1, 1, levels, 2)
        return gather_sample(value, value_spatial_shapes_list,
                             loc[..., 0] * hw[..., 1:2] - 0.5, loc[..., 1] * hw[..., 0:1] - 0.5,
                             attention_weights.permute(0, 2, 1, 3, 4))


def _attention_forward(self: nn.Module, hidden_states: Tensor,
                       attention_mask: Tensor | None = None,
                       encoder_hidden_states: Tensor | None = None,
                       encoder_attention_mask: Tensor | None = None,
                       position_embeddings: Tensor | None = None,
                       reference_points: Tensor | None = None,
                       spatial_shapes: Tensor | None = None,
                       spatial_shapes_list: list[tuple[int, int]] | None = None,
                       level_start_index: Tensor | None = None,
                       **kwargs) -> tuple[Tensor, Tensor]:
    """HF's ``DeformableDetrMultiscaleDeformableAttention.forward`` for the deployed model.

    With point references (the encoder's), a sampling location is the reference plus the
    offset divided by the level's size, which ``grid_sample`` then multiplies by the size
    again: in pixels it is the reference times the size plus the offset, so neither the
    division nor the multiplication over every sampling point is needed. A padding mask that
    masks nothing is not applied. Where the kernel runs without gradients, it adds each
    offset to its reference in its own loop
    (:func:`~prunekit.models.deformable_detr.kernel.sample_offsets`) and, for the encoder,
    softmaxes the attention logits as it reads them (returning no weights), and where far fewer
    queries sample than there are positions (the decoder's), the value projection is applied
    after the sampling rather than before it (:func:`_project_samples`). Otherwise box
    references take HF's own path into :class:`GatherSampling`.
    """
    if position_embeddings is not None:
        hidden_states = hidden_states + position_embeddings
    b, q, _ = hidden_states.shape
    s = encoder_hidden_states.shape[1]
    heads, levels, points = self.n_heads, self.n_levels, self.n_points
    mask = attention_mask if attention_mask is not None and not bool(attention_mask.all()) \
        else None
    offsets = self.sampling_offsets(hidden_states).view(b, q, heads, levels, points, 2)
    logits = self.attention_weights(hidden_states).view(b, q, heads, levels, points)
    inferring = kernel.usable(encoder_hidden_states, reference_points, offsets, logits) and not (
        torch.is_grad_enabled() and any(t.requires_grad for t in (
            encoder_hidden_states, reference_points, offsets, logits, self.value_proj.weight)))
    samples_first = inferring and _samples_first(q, s, heads, levels * points, self.d_model)
    points_in_kernel = inferring and reference_points.shape[-1] == 2 and not samples_first
    # The encoder's kernel softmaxes the logits as it reads them, and no attention weights are
    # returned (the encoder layer discards them).
    attn = None if points_in_kernel else F.softmax(
        logits.view(b, q, heads, levels * points), -1).view(b, q, heads, levels, points)
    if samples_first:
        ref, offsets = _pixels(reference_points, offsets, spatial_shapes_list, points)
        out = _project_samples(self.value_proj, encoder_hidden_states, mask,
                               spatial_shapes_list, ref, offsets, attn)
        return self.output_proj(out), attn
    value = self.value_proj(encoder_hidden_states)
    if mask is not None:
        value = value.masked_fill(~mask[..., None], 0.0)
    value = value.view(b, s, heads, self.d_model // heads)
    if reference_points.shape[-1] == 2:
        ref, _ = _pixels(reference_points, None, spatial_shapes_list, points)
        if points_in_kernel:
            out = kernel.sample_offsets(value, spatial_shapes_list, ref, offsets, logits,
                                        logits=True)
        else:
            pixels = (ref.unsqueeze(2).unsqueeze(-2) + offsets).permute(0, 2, 1, 3, 4, 5)
            out = gather_sample(value, spatial_shapes_list, pixels[..., 0], pixels[..., 1],
                                attn.permute(0, 2, 1, 3, 4))
    else:
        loc = reference_points[:, :, None, :, None, :2] + offsets / points \
            * reference_points[:, :, None, :, None, 2:] * 0.5
        out = self.attn(value, spatial_shapes, spatial_shapes_list, level_start_index, loc,
                        attn, self.im2col_step)
    return self.output_proj(out), attn


def _pixels(reference_points: Tensor, offsets: Tensor | None,
            shapes: list[tuple[int, int]], points: int) -> tuple[Tensor, Tensor | None]:
    """Each query's reference per level in ``grid_sample``'s pixel coordinates (fraction ×
    size − 0.5; batch × queries × levels × 2) and ``offsets`` in pixels from it. Point
    references (x, y) take the offsets as they are; box references (x, y, w, h) scale them
    by half the box over the number of points, as HF does, and by the level's size."""
    hw = reference_points.new_tensor(shapes).flip(-1)  # levels × (width, height)
    ref = reference_points[..., :2] * hw - 0.5
    if offsets is None or reference_points.shape[-1] == 2:
        return ref, offsets
    scale = reference_points[..., 2:] * hw * (0.5 / points)  # b, q, levels, 2
    return ref, offsets * scale[:, :, None, :, None, :]


def _samples_first(queries: int, positions: int, heads: int, samples: int, d_model: int) -> bool:
    """Whether sampling the unprojected map for every head and projecting the samples does
    fewer multiply–adds than projecting every position and sampling each head's width (four
    corners a sample): the decoder's 300 queries against the encoder's 9,792 positions of the
    reference model at 375 × 1242, not the encoder's own queries."""
    width = d_model // heads
    first = queries * heads * (4 * samples * d_model + d_model * width)
    return first < positions * d_model * d_model + queries * heads * 4 * samples * width


def _project_samples(projection: nn.Linear, memory: Tensor, mask: Tensor | None,
                     shapes: list[tuple[int, int]], reference: Tensor, offsets: Tensor,
                     attn: Tensor) -> Tensor:
    """The deformable attention's samples of ``projection(memory)``, head by head, computed as
    the projection of the samples of ``memory``: sampling is a weighted sum of map rows, so
    head h's sample of W·m + b is W_h·(its sample of m) + b_h·(the sum of its weights that fall
    on the map). Every head samples the whole unprojected row (d_model wide) at its own points,
    then one batched product maps it to the head's width. On the reference model's decoder
    this replaces the value projection of all 9,792 encoder positions (0.64 G
    multiply–accumulates a layer, about 6.5 ms on two threads) by about 0.06 G, as much in a
    pruned model as in the dense one.

    Args:
        projection: the value projection (d_model → d_model, heads × width rows).
        memory: batch × positions × d_model, every level's map flattened and concatenated.
        mask: batch × positions, False where padding (zero there), or None.
        shapes: each level's (height, width).
        reference: batch × queries × levels × 2, pixels.
        offsets: batch × queries × heads × levels × points × 2, pixels from the reference.
        attn: attention weights, batch × queries × heads × levels × points.

    Returns:
        batch × queries × d_model, as the projected map's samples would be.
    """
    b, q, heads, levels, points = attn.shape
    s, d = memory.shape[1:]
    rows = (b, q * heads, 1, levels, points)  # one row of the kernel per (query, head)
    reference = reference.repeat_interleave(heads, dim=1)
    offsets, attn = offsets.reshape(*rows, 2), attn.reshape(rows)
    if mask is not None:
        memory = memory.masked_fill(~mask[..., None], 0.0)
    sampled = kernel.sample_offsets(memory.reshape(b, s, 1, d), shapes, reference, offsets,
                                    attn)
    weight = projection.weight.view(heads, d // heads, d).transpose(1, 2)  # heads × d × width
    x = sampled.view(b * q, heads, d).transpose(0, 1)  # heads × (b · q) × d
    if projection.bias is None:
        out = torch.bmm(x, weight)
    else:
        # The weight that falls on the map (and off the padding), sampled from a map of ones:
        # 16 wide, the kernel's narrowest vector row.
        ones = memory.new_ones(b, s, 1, 16)
        if mask is not None:
            ones = ones.masked_fill(~mask[:, :, None, None], 0.0)
        on_map = kernel.sample_offsets(ones, shapes, reference, offsets, attn)[..., 0]
        bias = on_map.view(b * q, heads).t().unsqueeze(-1) * projection.bias.view(heads, 1, -1)
        out = torch.baddbmm(bias, x, weight)
    return out.transpose(0, 1).reshape(b, q, d)


class CachedPositions(nn.Module):
    """HF's sine position embedding (the module it wraps), kept from one image to the next while
    the feature map's shape and its padding mask stay the same: a deployed model sees one input
    size, and on the reference Deformable DETR at 375 x 1242 (two threads) the four levels'
    embeddings took 5-6 ms of every image, as much in a pruned model as in the dense one. The
    mask is compared, not assumed (an image of another aspect pads part of the canvas). The
    embedding has no parameters, so nothing of it needs gradients; traces compute it, and
    inference mode keeps entries of its own (its tensors cannot enter autograd)."""

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        self.embedding = embedding
        self._cache: dict[tuple, tuple[Tensor | None, Tensor]] = {}

    def forward(self, shape: torch.Size, device: torch.device | str, dtype: torch.dtype,
                mask: Tensor | None = None) -> Tensor:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self.embedding(shape=shape, device=device, dtype=dtype, mask=mask)
        key = (tuple(shape), str(device), dtype, torch.is_inference_mode_enabled())
        hit = self._cache.get(key)
        if hit is not None and (hit[0] is None if mask is None else (
                hit[0] is not None and torch.equal(hit[0], mask))):
            return hit[1]
        pos = self.embedding(shape=shape, device=device, dtype=dtype, mask=mask)
        self._cache[key] = (None if mask is None else mask.clone(), pos)
        return pos


def cached_positions(model: nn.Module) -> nn.Module:
    """``model`` with its sine position embedding in a :class:`CachedPositions`."""
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrSinePositionEmbedding,
    )

    for m in list(model.modules()):
        for name, child in m.named_children():
            if isinstance(child, DeformableDetrSinePositionEmbedding):
                setattr(m, name, CachedPositions(child))
    return model


class OneDnnLinear(nn.Linear):
    """A ``nn.Linear`` (same parameters, same outputs to float rounding), optionally followed by
    a ReLU, that runs as one oneDNN matrix product with its bias and ReLU applied inside it
    where it can (float32 on a CPU with PyTorch's oneDNN, no gradients, no tracing). PyTorch's
    own linear writes the bias into the output first and then accumulates the product over it,
    and a ReLU after it is one more pass: on the reference Deformable DETR's encoder (9,792
    queries, d_model 256, two threads) a 256 → 256 product took 7.3 ms that way against 6.0 ms
    as one oneDNN primitive. Those passes are as wide as the model's unpruned width, so
    filter pruning cannot shrink them.

    The primitive reads the weight in oneDNN's blocked layout, reordered once (for the row
    count of the first call) and kept until the weight changes, rather than reordered on every
    call: 5-9 % off each of the reference encoder's products, timed alone."""

    def __init__(self, linear: nn.Linear, *, relu: bool = False) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None,
                         device="meta")
        self.weight, self.bias, self.relu = linear.weight, linear.bias, relu
        self._packed: tuple[tuple[int, int], Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if _onednn_linear() and x.device.type == "cpu" and x.dtype == torch.float32 \
                and self.weight.dtype == torch.float32 and not torch.jit.is_tracing() \
                and not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and (
                    x.requires_grad or self.weight.requires_grad)):
            return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(x), self.bias,
                                                      "relu" if self.relu else "none",
                                                      [None] if self.relu else [], "")
        y = F.linear(x, self.weight, self.bias)
        return F.relu(y) if self.relu else y

    def _packed_weight(self, x: Tensor) -> Tensor:
        # Keyed by the weight's storage and version: an in-place update or a new tensor
        # repacks, so the primitive never reads a stale copy.
        key = (self.weight.data_ptr(), self.weight._version)
        if self._packed is None or self._packed[0] != key:
            rows = x.numel() // max(x.shape[-1], 1)
            self._packed = key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(),
                                                                       max(rows, 1))
        return self._packed[1]

    def __getstate__(self) -> dict:
        # The packed weight is a cache (and an opaque oneDNN tensor, which neither pickles
        # nor deep-copies): a copy repacks on its first call.
        return {**super().__getstate__(), "_packed": None}


@functools.cache
def _onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() \
        and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def onednn_linears(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Linear`` an :class:`OneDnnLinear`, and each feed-forward's
    first layer and its ReLU one :class:`OneDnnLinear` with the ReLU inside."""
    from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMLP

    for m in model.modules():
        if isinstance(m, DeformableDetrMLP) and isinstance(m.activation_fn, nn.ReLU) \
                and type(m.fc1) is nn.Linear:
            m.fc1, m.activation_fn = OneDnnLinear(m.fc1, relu=True), nn.Identity()
    for m in list(model.modules()):
        for name, child in m.named_children():
            if type(child) is nn.Linear:
                setattr(m, name, OneDnnLinear(child))
    return model


def inplace_relu(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.ReLU`` in place: each one rectifies a fresh intermediate (a
    convolution's or ``fc1``'s output, a residual sum), so nothing else reads its input, and
    the largest activations of the encoder are not copied once more."""
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    return model


def _encoder_layer_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor,
                          spatial_position_embeddings: Tensor | None = None,
                          reference_points: Tensor | None = None,
                          spatial_shapes: Tensor | None = None,
                          spatial_shapes_list: list[tuple[int, int]] | None = None,
                          level_start_index: Tensor | None = None, **kwargs) -> Tensor:
    """HF's ``DeformableDetrEncoderLayer.forward`` in eval mode, each residual addition and the
    layer norm after it one pass where the kernel runs (:func:`kernel.add_norm`). In training
    mode (dropout) the layer's own forward runs."""
    if self.training:
        return type(self).forward(self, hidden_states, attention_mask,
                                  spatial_position_embeddings=spatial_position_embeddings,
                                  reference_points=reference_points,
                                  spatial_shapes=spatial_shapes,
                                  spatial_shapes_list=spatial_shapes_list,
                                  level_start_index=level_start_index, **kwargs)
    attended, _ = self.self_attn(
        hidden_states=hidden_states, attention_mask=attention_mask,
        encoder_hidden_states=hidden_states, encoder_attention_mask=attention_mask,
        position_embeddings=spatial_position_embeddings, reference_points=reference_points,
        spatial_shapes=spatial_shapes, spatial_shapes_list=spatial_shapes_list,
        level_start_index=level_start_index)
    hidden_states = kernel.add_norm(attended, hidden_states, self.self_attn_layer_norm)
    return kernel.add_norm(self.mlp(hidden_states), hidden_states, self.final_layer_norm)


def fused_norms(model: nn.Module) -> nn.Module:
    """``model`` with every encoder layer adding each residual and normalising the sum in one
    pass (:func:`_encoder_layer_forward`): on the reference Deformable DETR at 375 × 1242 the
    addition and the layer norm over 9,792 rows of 256 took about 2 ms inside the model, twice
    a layer, in a pruned model as in the dense one (whose encoder width is the same). A
    transformers whose encoder layer takes other arguments or holds other parts keeps its
    own forward."""
    import inspect
    import types

    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrEncoderLayer,
    )

    ours = list(inspect.signature(_encoder_layer_forward).parameters)[:-1]  # less **kwargs
    theirs = list(inspect.signature(DeformableDetrEncoderLayer.forward).parameters)
    if theirs[:len(ours)] != ours:
        return model
    parts = ("self_attn", "self_attn_layer_norm", "mlp", "final_layer_norm")
    for m in model.modules():
        if isinstance(m, DeformableDetrEncoderLayer) and all(hasattr(m, p) for p in parts):
            m.forward = types.MethodType(_encoder_layer_forward, m)
    return model


def lean_sampling(model: nn.Module) -> nn.Module:
    """``model`` with every HF ``MultiScaleDeformableAttention`` replaced by
    :class:`GatherSampling`, and every deformable attention layer computing its encoder's
    sampling points in pixels (:func:`_attention_forward`)."""
    import types

    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrMultiscaleDeformableAttention,
        MultiScaleDeformableAttention,
    )

    for m in model.modules():
        if isinstance(getattr(m, "attn", None), MultiScaleDeformableAttention):
            m.attn = GatherSampling()
        if isinstance(m, DeformableDetrMultiscaleDeformableAttention):
            m.forward = types.MethodType(_attention_forward, m)
    return model
