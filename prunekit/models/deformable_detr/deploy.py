"""Deformable DETR as deployed: every backbone BatchNorm, frozen or not, folded into the
convolution before it (HF's ResNet puts one after each convolution, shortcuts included)."""

from __future__ import annotations

import torch
from torch import nn


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
