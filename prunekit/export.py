"""Export a checkpoint in a format another tool loads: Hugging Face ``save_pretrained`` folders
(Deformable DETR), through the family that knows the format."""

from __future__ import annotations

from pathlib import Path

from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.models import registry


def export(ck: Checkpoint, out: str | Path, *, fmt: str = "hf") -> Path:
    """Write ``ck`` to ``out`` as ``fmt``; the output appears complete or not at all.

    Args:
        ck: the checkpoint (masks applied: its state is what is written).
        out: the output path (a folder for ``hf``; it must not exist, or be empty).
        fmt: ``hf``, a ``save_pretrained`` folder.

    Returns:
        The path written.
    """
    family = registry.get(ck.family)
    formats = family.export_formats
    if fmt not in formats:
        raise PrunekitError(f"{ck.name} is a {ck.family} model, which exports to "
                            f"{', '.join(formats) or 'no other format'}, not {fmt}")
    family.export(ck.build(), fmt, Path(out))
    return Path(out)
