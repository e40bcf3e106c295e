"""Deformable DETR on Hugging Face transformers: ``deformable-detr`` (the second study's
ResNet-50 reference), ``deformable-detr-small`` (the embedded CPU member), and import and export
of ``save_pretrained`` folders. Reached only through :mod:`prunekit.models.registry`.

- ``config``: members as HF configs, the ``arch`` that records them, the offline switch;
- ``detector``: the wrapped module and the family interface; ``transform``: fit and pad;
- ``groups``: what filter pruning removes, and rebuilding at pruned widths;
- ``deploy``: BatchNorm folding; ``family``: creation, HF import and export.
"""

from prunekit.models.deformable_detr.family import DeformableDETRFamily

FAMILY = DeformableDETRFamily()

__all__ = ["FAMILY"]
