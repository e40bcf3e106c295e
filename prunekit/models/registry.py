"""Family name → implementation. The only way into a family's package.

Families are imported when first asked for, so ``import prunekit`` stays light and a family's
heavy dependencies (transformers, for Deformable DETR) load only when a command uses it.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from prunekit.errors import ModelError
from prunekit.models.base import Detector, Family

# Family name → the module whose FAMILY attribute implements it.
_PACKAGES = {
    "yolov3": "prunekit.models.yolov3",
    "deformable-detr": "prunekit.models.deformable_detr",
}
# What a checkpoint written before families were recorded holds.
LEGACY_FAMILY = "yolov3"

_loaded: dict[str, Family] = {}


def names() -> list[str]:
    """Every family's name."""
    return list(_PACKAGES)


def get(name: str) -> Family:
    """The family called ``name``."""
    if name not in _PACKAGES:
        raise ModelError(f"model family {name!r} is unknown; this prunekit knows "
                         f"{', '.join(_PACKAGES)}; upgrade prunekit to read this file")
    if name not in _loaded:
        _loaded[name] = importlib.import_module(_PACKAGES[name]).FAMILY
    return _loaded[name]


def members() -> dict[str, Family]:
    """Every member ``prunekit init`` can create, with its family."""
    return {m: f for f in map(get, _PACKAGES) for m in f.members}


def family_of(member: str) -> Family:
    """The family a member (e.g. ``yolov3-small``) belongs to."""
    known = members()
    if member not in known:
        raise ModelError(f"unknown architecture {member!r}; choose one of "
                         f"{', '.join(known)}")
    return known[member]


def importer(options: list[str]) -> Family:
    """The family whose files the given `init` import options name (e.g. ``cfg``)."""
    for family in map(get, _PACKAGES):
        if set(options) <= set(family.import_options):
            return family
    raise ModelError(f"no model family imports {' + '.join('--' + o for o in options)} "
                     f"together; give one family's files")


def build(family: str, arch: dict[str, Any], input_spec: dict[str, Any],
          classes: list[str]) -> Detector:
    """The module of a checkpoint (random weights; load its state next)."""
    return get(family).build(arch, input_spec, classes)


def skeleton(family: str, arch: dict[str, Any], input_spec: dict[str, Any],
             classes: list[str]) -> Detector:
    """The module without storage (on the meta device): its structure, names and shapes, for
    what needs no weights (prunable names, channel groups), at no cost even for large models."""
    with torch.device("meta"):
        return build(family, arch, input_spec, classes)
