"""Detector families behind one interface (:mod:`prunekit.models.base`), installed as entry points
and found by name through :mod:`prunekit.models.registry`, with one compaction for all
(:mod:`prunekit.models.compact`). What a family package outside prunekit needs is here."""

from prunekit.models.base import (
    COLOURS,
    MAX_INPUT_SIDE,
    ChannelGroup,
    Detections,
    Detector,
    Family,
    Geometry,
    Graph,
    Grey,
    InputTransform,
    Option,
    Outputs,
    Slice,
    Target,
    default_names,
)
from prunekit.models.registry import build, family_of, get, members, skeleton

__all__ = ["COLOURS", "MAX_INPUT_SIDE", "ChannelGroup", "Detections", "Detector", "Family",
           "Geometry", "Graph", "Grey", "InputTransform", "Option", "Outputs", "Slice",
           "Target", "build", "default_names", "family_of", "get", "members", "skeleton"]
