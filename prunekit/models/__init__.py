"""Detector families behind one interface (:mod:`prunekit.models.base`), found by name through
:mod:`prunekit.models.registry`, with one compaction for all (:mod:`prunekit.models.compact`)."""

from prunekit.models.base import (
    ChannelGroup,
    Detections,
    Detector,
    Family,
    Geometry,
    InputTransform,
    Slice,
    Target,
)
from prunekit.models.registry import build, family_of, get, members, skeleton

__all__ = ["ChannelGroup", "Detections", "Detector", "Family", "Geometry", "InputTransform",
           "Slice", "Target", "build", "family_of", "get", "members", "skeleton"]
