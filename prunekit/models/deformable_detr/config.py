"""Deformable DETR members as Hugging Face configurations, and the ``arch`` that records them.

An ``arch`` is ``{"name", "config", "batchnorm", "widths"}``: the member (or imported folder)
name; the full ``DeformableDetrConfig`` as a dict (its ``backbone_config`` a ``ResNetConfig``
dict, so nothing names a hub model and nothing is downloaded); ``batchnorm``, ``"trainable"``
(real ``nn.BatchNorm2d`` and the whole backbone trained: a model trained from scratch) or
``"frozen"`` (HF's frozen BatchNorm and frozen backbone, as an imported pretrained model keeps
it); and ``widths``, the per-layer widths that compaction changed (module path → output channels
or hidden units), which HF's config, with one width per kind of layer, cannot hold.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Any

from prunekit.errors import ModelError

# The reference configuration of the second study: ResNet-50 (bottleneck blocks) and the
# Deformable DETR defaults (6 + 6 layers, d_model 256, 8 heads, 300 queries, 4 feature levels).
_REFERENCE: dict[str, Any] = {
    "backbone": {"layer_type": "bottleneck", "hidden_sizes": [256, 512, 1024, 2048],
                 "depths": [3, 4, 6, 3], "embedding_size": 64},
    "detr": {},
}
# The embedded CPU member: a ResNet of basic blocks at an eighth of ResNet-18's width past the
# stem and one block per stage, d_model 64, 2 + 2 layers, 4 heads, 256 feed-forward units,
# 50 queries, iterative box refinement, auxiliary losses (the original recipe). About 1.7 M
# parameters; a training step on 16 images of 128 × 384 takes 0.38 s on two cores (two
# processes of one thread, with prunekit's sampling kernel; 0.55 s on HF's grid_sample path).
# Two-stage is off: in HF's implementation its encoder proposal heads get no loss, and a probe
# here trained no better with it.
_SMALL: dict[str, Any] = {
    "backbone": {"layer_type": "basic", "hidden_sizes": [32, 64, 128, 256],
                 "depths": [1, 1, 1, 1], "embedding_size": 32},
    "detr": {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
             "encoder_attention_heads": 4, "decoder_attention_heads": 4,
             "encoder_ffn_dim": 256, "decoder_ffn_dim": 256, "num_queries": 50,
             "with_box_refine": True, "auxiliary_loss": True},
}
MEMBERS: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    # name → (configuration, default input (height, width))
    "deformable-detr": (_REFERENCE, (384, 1248)),
    "deformable-detr-small": (_SMALL, (128, 384)),
}


@contextlib.contextmanager
def offline():
    """Hugging Face's hub switched off for the block (prunekit builds and imports models from
    configs and local folders only, and never reaches the network), and its progress bars and
    load reports silenced: prunekit reports on stderr itself, one line per problem."""
    from transformers.utils import logging as hf_logging

    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def member_arch(member: str, classes: list[str]) -> dict[str, Any]:
    """The ``arch`` of a member with fresh weights: trainable BatchNorm, default widths."""
    from transformers import DeformableDetrConfig, ResNetConfig

    spec = copy.deepcopy(MEMBERS[member][0])
    backbone = ResNetConfig(**spec["backbone"], out_features=["stage2", "stage3", "stage4"])
    config = DeformableDetrConfig(backbone_config=backbone, use_timm_backbone=False,
                                  backbone=None, use_pretrained_backbone=False,
                                  disable_custom_kernels=True, num_labels=len(classes),
                                  id2label=dict(enumerate(classes)),
                                  label2id={c: i for i, c in enumerate(classes)}, **spec["detr"])
    return {"name": member, "config": config_dict(config), "batchnorm": "trainable",
            "widths": {}}


def config_dict(config: Any) -> dict[str, Any]:
    """A ``DeformableDetrConfig`` as a JSON-serialisable dict (integer label keys as text, as
    HF writes them)."""
    data = config.to_dict()
    data.pop("transformers_version", None)
    # As it reads back from JSON (label keys as text, tuples as lists), so a checkpoint's
    # arch compares equal to the one it was written from.
    return json.loads(json.dumps(data))


def hf_config(arch: dict[str, Any], classes: list[str]):
    """The ``DeformableDetrConfig`` an ``arch`` records, labelled with ``classes``."""
    from transformers import DeformableDetrConfig

    data = copy.deepcopy(arch["config"])
    data.update(num_labels=len(classes), id2label={str(i): c for i, c in enumerate(classes)},
                label2id={c: i for i, c in enumerate(classes)})
    backbone = data.get("backbone_config") or {}
    if backbone.get("model_type") != "resnet":
        raise ModelError(f"this Deformable DETR's backbone is {backbone.get('model_type')!r}; "
                         f"prunekit builds HF's own ResNet backbones only (no timm, no "
                         f"download)")
    with offline():
        config = DeformableDetrConfig.from_dict(data)
    config.use_timm_backbone = False
    config.use_pretrained_backbone = False
    config.disable_custom_kernels = True
    if config.d_model % 32:
        raise ModelError(f"d_model {config.d_model} is not a multiple of 32, which the input "
                         f"projection's GroupNorm(32) needs")
    return config
