"""What filter pruning may remove from Deformable DETR, and models rebuilt at pruned widths.

Prunable channel groups:

- the inner channels of every ResNet block: a bottleneck's first two convolutions (1×1 and 3×3)
  or a basic block's first 3×3, with their BatchNorm, read only by the next convolution of the
  same block;
- the feed-forward hidden units of every encoder and decoder layer: ``fc1``'s rows and bias,
  read only by ``fc2``'s columns.

A removed channel's producers are zero, so it outputs exactly zero (BatchNorm, frozen or not,
gives 0 · x + 0 and ReLU keeps 0), and removing it with its reader's columns changes nothing.

What stays, and why: ``d_model`` runs through every residual connection, LayerNorm, the input
projections, the level and query embeddings and the heads, so one channel of it is a coupled
set across the whole transformer; the deformable attention's projections are viewed as
heads × levels × points (``sampling_offsets``, ``attention_weights``) and heads × head width
(``value_proj``, ``output_proj``), so removing units there changes the attention's geometry,
not only its width; and a ResNet stage's output channels are added to its shortcut in every
block and read by the input projections. (Torch-Pruning's DETR tracing fails on exactly these,
its issue #307.)

HF's config holds one width per kind of layer, so a compacted model records its widths in
``arch["widths"]`` (the group's module path → its width) and is rebuilt by constructing the
configured model and resizing those layers (:func:`resize`) before its weights load.
"""

from __future__ import annotations

from torch import Tensor, nn

from prunekit.models.base import ChannelGroup, Slice


def _blocks(detr: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, block) of every ResNet block in the backbone."""
    encoder = detr.model.backbone.model.encoder
    return [(f"model.backbone.model.encoder.stages.{s}.layers.{i}", block)
            for s, stage in enumerate(encoder.stages) for i, block in enumerate(stage.layers)]


def _ffns(detr: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, mlp) of every feed-forward network in the encoder and decoder."""
    return [(f"model.{part}.layers.{i}.mlp", layer.mlp)
            for part in ("encoder", "decoder")
            for i, layer in enumerate(getattr(detr.model, part).layers)]


def channel_groups(detr: nn.Module, prefix: str) -> list[ChannelGroup]:
    """The prunable groups of an HF ``DeformableDetrForObjectDetection``, its state-dict names
    under ``prefix``."""
    groups = []
    for path, block in _blocks(detr):
        for k, conv in enumerate(list(block.layer)[:-1]):
            p = f"{prefix}{path}.layer.{k}"
            groups.append(ChannelGroup(
                p, conv.convolution.out_channels,
                producers=(Slice(f"{p}.convolution.weight", 0),
                           Slice(f"{p}.normalization.weight", 0),
                           Slice(f"{p}.normalization.bias", 0)),
                statistics=(Slice(f"{p}.normalization.running_mean", 0),
                            Slice(f"{p}.normalization.running_var", 0)),
                consumers=(Slice(f"{prefix}{path}.layer.{k + 1}.convolution.weight", 1),),
                scored=(f"{p}.convolution.weight",)))
    for path, mlp in _ffns(detr):
        p = f"{prefix}{path}"
        groups.append(ChannelGroup(
            p, mlp.fc1.out_features,
            producers=(Slice(f"{p}.fc1.weight", 0), Slice(f"{p}.fc1.bias", 0)),
            consumers=(Slice(f"{p}.fc2.weight", 1),), scored=(f"{p}.fc1.weight",)))
    return groups


def configured_widths(detr: nn.Module) -> dict[str, int]:
    """Each group's width in a model as its config builds it (before :func:`resize`)."""
    return {g.name: g.size for g in channel_groups(detr, "")}


def widths(state: dict[str, Tensor], configured: dict[str, int], prefix: str) -> dict[str, int]:
    """The widths of ``state`` that differ from the configured ones (what ``arch`` records)."""
    out = {}
    for name, size in configured.items():
        key = f"{prefix}{name}.fc1.weight" if name.endswith(".mlp") else \
            f"{prefix}{name}.convolution.weight"
        width = int(state[key].shape[0])
        if width != size:
            out[name] = width
    return out


def resize(detr: nn.Module, sizes: dict[str, int]) -> None:
    """Resize the layers ``sizes`` names (as :func:`widths` writes them), in place; the new
    layers' weights are uninitialised, for a state dict to fill."""
    blocks = dict(_blocks(detr))
    ffns = dict(_ffns(detr))
    for path, width in sizes.items():
        if path in ffns:
            mlp = ffns[path]
            mlp.fc1 = _linear(mlp.fc1, mlp.fc1.in_features, width)
            mlp.fc2 = _linear(mlp.fc2, width, mlp.fc2.out_features)
            continue
        block_path, _, k = path.rpartition(".layer.")
        if block_path not in blocks or not k.isdigit():
            raise KeyError(path)
        layers = blocks[block_path].layer
        k = int(k)
        layers[k].convolution = _conv(layers[k].convolution, layers[k].convolution.in_channels,
                                      width)
        layers[k].normalization = _norm(layers[k].normalization, width)
        nxt = layers[k + 1].convolution
        layers[k + 1].convolution = _conv(nxt, width, nxt.out_channels)


def _conv(old: nn.Conv2d, c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, old.kernel_size, old.stride, old.padding, old.dilation,
                     old.groups, old.bias is not None, old.padding_mode,
                     device=old.weight.device, dtype=old.weight.dtype)


def _linear(old: nn.Linear, c_in: int, c_out: int) -> nn.Linear:
    return nn.Linear(c_in, c_out, old.bias is not None, device=old.weight.device,
                     dtype=old.weight.dtype)


def _norm(old: nn.Module, width: int) -> nn.Module:
    new = type(old)(width) if not isinstance(old, nn.BatchNorm2d) else nn.BatchNorm2d(
        width, eps=old.eps, momentum=old.momentum)
    return new.to(device=old.running_mean.device)
