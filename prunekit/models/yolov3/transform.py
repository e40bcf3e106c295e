"""YOLOv3's input transform: the letterbox.

An image is padded to a centred square with grey 114/255, then resized (bilinear, antialiased)
to the model's input size. Its geometry is the scale (input pixels per original pixel) and the
padding in input pixels, so a box maps back to original pixels as ``(x - pad_x) / scale``. One
implementation, differentiable, serves datasets (through
:meth:`~prunekit.models.base.InputTransform.image`, quantised to 8 bits) and attacks in
original pixel space alike.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from prunekit.models.base import Geometry, InputTransform

PAD_VALUE = 114


class Letterbox(InputTransform):
    """Pad to a centred square, then resize to ``size`` × ``size``."""

    def __init__(self, size: int) -> None:
        self.size = (size, size)

    def _padding(self, width: int, height: int) -> tuple[int, int, int]:
        side = max(width, height)
        return side, (side - width) // 2, (side - height) // 2

    def geometry(self, width: int, height: int) -> Geometry:
        side, left, top = self._padding(width, height)
        scale = self.size[0] / side
        return Geometry(width, height, scale, left * scale, top * scale)

    def __call__(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        side, left, top = self._padding(w, h)
        if side != w or side != h:
            images = F.pad(images, (left, side - w - left, top, side - h - top),
                           value=PAD_VALUE / 255)
        if side != self.size[0]:
            images = F.interpolate(images, size=self.size, mode="bilinear", antialias=True,
                                   align_corners=False)
        return images
