"""YOLOv3 in the form a deployment runs: BatchNorm folded, LeakyReLU in place, and, for the
oneDNN Graph runtime, explicit channels-last inputs where the fuser needs them."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from prunekit.models.yolov3.layers import ConvBlock, Route


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy for inference: BatchNorm folded into the conv before it, LeakyReLU in place.

    The same function (to float rounding: a few 1e-7), with two fewer passes over every
    activation; what a deployment does, so ``bench`` times this form of every model alike.
    """
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvBlock):
            if m.bn is not None:
                m.conv, m.bn = fuse_conv_bn_eval(m.conv, m.bn), None
            if m.act is not None:
                m.act.inplace = True
    return model


def deployed(model: nn.Module, runtime: str = "eager") -> nn.Module:
    """The deployment form for ``runtime`` (``eager`` or ``onednn-graph``)."""
    model = fuse_for_inference(model)
    return _plain_unfused_inputs(model) if runtime == "onednn-graph" else model


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class _PlainConcat(Route):
    """A concatenating ``route`` that makes its inputs channels-last tensors itself."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return super().forward(*map(_channels_last, xs))


class _PlainUpsample(nn.Upsample):
    """An ``upsample`` layer that makes its input a channels-last tensor itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_channels_last(x))


def _plain_unfused_inputs(model: nn.Module) -> nn.Module:
    """``model`` (already a copy) with explicit channels-last ``contiguous`` calls before the
    layers the oneDNN Graph fuser leaves to PyTorch: upsampling and concatenation.

    Measured on yolov3-416 under the fuser with channels-last input:
    - without them, the conv before an upsampling writes NCHW (a oneDNN reorder after the conv),
      the upsampled map fails the concatenation's stride guard, and the guard's fallback hands
      a fused conv's output, still in oneDNN's own layout, to ``aten::cat``, which fails
      ("Could not run 'aten::cat.out' with arguments from the 'MkldnnCPU' backend");
    - with the concatenation's alone, it runs, but the upsampling and concatenation copy the
      map back to channels-last: four copies per upsampling, about 0.2 ms per image at 75 %
      compaction;
    - with both, the fused convs write those outputs channels-last and every ``contiguous`` is
      a no-op (the profiler shows no ``aten::copy_``). The upsampling's alone also sufficed;
      the concatenation's stays so that a guard failure can never hand it a oneDNN tensor.
    """
    layers = model.layers
    for i, m in enumerate(layers):
        if type(m) is Route and len(m.sources) > 1:
            layers[i] = _PlainConcat(m.sources)
        elif type(m) is nn.Upsample:
            layers[i] = _PlainUpsample(scale_factor=m.scale_factor, mode=m.mode)
    return model
