"""The RetinaNet family: members, fresh models, the options it adds to `prunekit init` and
`prunekit export`, and torchvision-keyed weight files in and out.

An ``arch`` records everything :class:`RetinaNetDetector` needs to rebuild the module:

- ``blocks``: BasicBlocks per ResNet stage (``[2, 2, 2, 2]`` is ResNet-18); stages 2 and up
  feed the feature pyramid, whose last level is pooled once more;
- ``fpn_channels``: the pyramid's (and the head's) width;
- ``anchor_sizes`` (one list per pyramid level, in input pixels) and ``aspect_ratios``;
- ``widths``: the pruned widths of a compacted model (group name → width);
- ``frozen``: module paths whose parameters are not trained (an imported model's stem).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from prunekit.errors import ModelError
from prunekit.models import COLOURS, MAX_INPUT_SIDE, Detector, Family, Option
from prunekit_retinanet.detector import RetinaNetDetector

SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))  # torchvision's three anchor scales per level
MEMBERS: dict[str, dict[str, Any]] = {
    # A small CPU member: three stages of one block, a 32-channel pyramid, 128 pixels.
    "retinanet-tiny": {"blocks": [1, 1, 1], "fpn_channels": 32, "base": (16, 32, 64),
                       "size": 128},
    # ResNet-18 with torchvision's 256-channel pyramid, 512 pixels.
    "retinanet-resnet18": {"blocks": [2, 2, 2, 2], "fpn_channels": 256,
                           "base": (32, 64, 128, 256), "size": 512},
}
# torchvision's detection models train a pretrained backbone with its stem and first stage
# frozen (trainable_backbone_layers=3); imported weights are treated the same way.
FROZEN_ON_IMPORT = ["backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer1"]
FORMAT = "prunekit-retinanet"


class RetinaNetFamily(Family):
    """``retinanet-tiny`` and ``retinanet-resnet18``, and torchvision-keyed safetensors."""

    name: ClassVar[str] = "retinanet"
    members: ClassVar[tuple[str, ...]] = tuple(MEMBERS)
    init_options: ClassVar[tuple[Option, ...]] = (
        Option("fpn-channels", int, "Feature pyramid (and head) width (default: the "
                                    "member's)."),
        Option("torchvision", Path, "Weights written by `prunekit export --torchvision`, to "
                                    "import (its stem and first stage frozen, as torchvision "
                                    "fine-tunes).", imports=True),
    )
    export_options: ClassVar[tuple[Option, ...]] = (
        Option("torchvision", Path, "Write the weights with torchvision's RetinaNet key names "
                                    "(safetensors; not for compacted models)."),
    )
    small: ClassVar[dict[str, dict[str, Any]]] = {"retinanet-tiny": {"img_size": 64}}

    def build(self, arch: dict[str, Any], input_spec: dict[str, Any],
              classes: list[str]) -> Detector:
        return RetinaNetDetector(arch, input_spec, classes)

    def create(self, member: str, classes: list[str], *, img_size: int | None = None,
               grey: bool = False, options: dict[str, Any] | None = None) -> Detector:
        options = dict(options or {})
        unknown = sorted(set(options) - {"fpn-channels"})
        if unknown:
            raise ModelError(f"{member} has no option --{unknown[0]}; RetinaNet members take "
                             f"--fpn-channels")
        spec = MEMBERS[member]
        fpn = options.get("fpn-channels", spec["fpn_channels"])
        if fpn < 1:
            raise ModelError(f"--fpn-channels must be at least 1, got {fpn}")
        arch = {"name": member, "blocks": spec["blocks"], "fpn_channels": fpn,
                "anchor_sizes": [[round(b * s) for s in SCALES] for b in spec["base"]],
                "aspect_ratios": [0.5, 1.0, 2.0], "widths": {}}
        size = spec["size"] if img_size is None else img_size
        return RetinaNetDetector(arch, self.input_spec(size=size, colour="grey" if grey
                                                       else "rgb"), classes)

    def import_files(self, options: dict[str, Any], classes: list[str] | None, *,
                     img_size: int | None = None, grey: bool = False) -> Detector:
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        path = Path(options["torchvision"])
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
            state = load_file(path)
        except (OSError, SafetensorError) as e:
            raise ModelError(f"--torchvision {path} cannot be read ({e}); give a file "
                             f"`prunekit export --torchvision` wrote") from None
        if meta.get("format") != FORMAT:
            raise ModelError(f"--torchvision {path} was not written by `prunekit export "
                             f"--torchvision` (no {FORMAT} metadata)")
        arch, spec = json.loads(meta["arch"]), json.loads(meta["input"])
        names = json.loads(meta["classes"])
        if classes is not None and len(classes) != len(names):
            raise ModelError(f"{path} has {len(names)} classes but {len(classes)} names were "
                             f"given; give one name per class or none")
        arch["frozen"] = FROZEN_ON_IMPORT
        spec = self.input_spec(spec, size=img_size, colour="grey" if grey else spec["colour"])
        model = RetinaNetDetector(arch, spec, classes or names)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(f"{path}: the weights do not fit their own arch ({len(missing)} "
                             f"missing, {len(unexpected)} unexpected); export it again")
        return model.eval()

    def export(self, model: Detector, fmt: str, out: Path) -> None:
        from safetensors.torch import save

        from prunekit.files import write_atomic

        if fmt != "torchvision":
            raise ModelError(f"the retinanet family exports no format {fmt!r}")
        if model.arch.get("widths"):
            raise ModelError("this model is compacted: torchvision's RetinaNet has one width "
                             "per kind of layer, so it cannot load the pruned widths; export "
                             "the masked model (mask without --compact) instead")
        arch = {k: v for k, v in model.arch.items() if k != "frozen"}
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        write_atomic(out, save(state, metadata={
            "format": FORMAT, "arch": json.dumps(arch), "input": json.dumps(model.input_spec),
            "classes": json.dumps(model.classes)}))

    def input_spec(self, spec: dict[str, Any] | None = None, *, size: Any = None,
                   colour: str | None = None) -> dict[str, Any]:
        """Floats in [0, 1], fitted into a ``size`` square keeping the aspect ratio and padded
        right and bottom, ImageNet-normalised inside the model."""
        spec = dict(spec or {"size": 128, "colour": "rgb", "range": [0.0, 1.0],
                             "normalise": "imagenet",
                             "resize": "fit the square keeping the aspect ratio, pad right "
                                       "and bottom with the mean colour"})
        if colour is not None:
            if colour not in COLOURS:
                raise ModelError(f"colour mode {colour!r} is unknown; use rgb or grey")
            spec["colour"] = colour
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size \
                    <= MAX_INPUT_SIDE:
                raise ModelError(f"--img-size must be a whole number of pixels from 32 to "
                                 f"{MAX_INPUT_SIDE}, got {size}")
            spec["size"] = size
        return spec

