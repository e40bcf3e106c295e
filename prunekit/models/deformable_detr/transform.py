"""Deformable DETR's input transform: resize into the model's canvas keeping the aspect ratio,
then pad right and bottom.

The image is scaled by the largest factor that fits the canvas (bilinear, antialiased) and
placed at the top left, as HF's image processor pads; the rest of the canvas is filled with
ImageNet's mean colour, which is zero after the model's normalisation (what HF's padding
holds), and the model's pixel mask (from each image's geometry) marks it as padding. The
geometry is the scale alone: a box maps back to original pixels as ``x / scale``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prunekit.models.base import Geometry, InputTransform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FitCanvas(InputTransform):
    """Scale to fit ``height`` × ``width``, pad right and bottom."""

    def __init__(self, height: int, width: int) -> None:
        self.size = (height, width)

    def _fit(self, width: int, height: int) -> tuple[float, int, int]:
        """The scale and the resized (width, height): the limiting side fills the canvas."""
        by_width, by_height = self.size[1] / width, self.size[0] / height
        if by_width <= by_height:
            return by_width, self.size[1], min(self.size[0], round(height * by_width))
        return by_height, min(self.size[1], round(width * by_height)), self.size[0]

    def geometry(self, width: int, height: int) -> Geometry:
        return Geometry(width, height, self._fit(width, height)[0])

    def valid(self, geometry: Geometry) -> tuple[int, int]:
        """The (height, width) of the canvas an image covers."""
        _, new_w, new_h = self._fit(geometry.width, geometry.height)
        return new_h, new_w

    def __call__(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        _, new_w, new_h = self._fit(w, h)
        if (new_h, new_w) != (h, w):
            images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", antialias=True,
                                   align_corners=False)
        if (new_h, new_w) != self.size:
            mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device)
            canvas = mean.view(1, 3, 1, 1).expand(*images.shape[:-2], *self.size).clone()
            canvas[..., :new_h, :new_w] = images
            images = canvas
        return images
