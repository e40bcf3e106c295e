"""RetinaNet (torchvision's parts, a small ResNet backbone) as a prunekit model family, installed
from outside prunekit: its entry point in pyproject.toml is all prunekit needs to find it."""

from prunekit_retinanet.family import RetinaNetFamily

FAMILY = RetinaNetFamily()

__all__ = ["FAMILY"]
