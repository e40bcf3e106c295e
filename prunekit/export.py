"""Export a checkpoint in a format another tool loads: ONNX, for every family
(:mod:`prunekit.onnx`), and each family's own formats (its ``export_options``, e.g. Deformable
DETR's Hugging Face ``save_pretrained`` folders), through the family that knows the format."""

from __future__ import annotations

from pathlib import Path

from prunekit import onnx
from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.models import registry


def export(ck: Checkpoint, out: str | Path, *, fmt: str) -> Path:
    """Write ``ck`` to ``out`` in a format its family writes; the output appears complete or
    not at all.

    Args:
        ck: the checkpoint (masks applied: its state is what is written).
        out: the output path (e.g. a folder for ``hf``, which must not exist, or be empty).
        fmt: the name of one of the family's export options (e.g. ``hf``, a
            ``save_pretrained`` folder).

    Returns:
        The path written.
    """
    family = registry.get(ck.family)
    formats = [o.flag for o in family.export_options]
    if f"--{fmt}" not in formats:
        _, other = registry.owner("export", fmt)
        raise PrunekitError(f"{ck.name} is a {ck.family} model, which exports to "
                            f"{', '.join(formats) or 'ONNX only'}; {other.flag} is another "
                            f"family's format")
    family.export(ck.build(), fmt, Path(out))
    return Path(out)


def export_onnx(ck: Checkpoint, out: str | Path, *, batch: int | None = None,
                opset: int = onnx.DEFAULT_OPSET, decoded: bool = False,
                verify: bool = True) -> onnx.Exported:
    """Write ``ck``'s deployment graph to ``out`` as ONNX, checked and (with ``verify``)
    compared with PyTorch through onnxruntime; nothing is written when either fails.

    Args:
        ck: the checkpoint. One with scores and no masks is refused: it is a dense model
            scored for pruning, not a pruned one (``prunekit mask`` comes first).
        out: the ``.onnx`` file.
        batch: a fixed batch size, or None for a dynamic batch dimension.
        opset: the ONNX opset.
        decoded: decoded boxes and scores instead of the raw outputs.
        verify: run the file with onnxruntime and compare its outputs with PyTorch's.

    Returns:
        What was exported and measured.
    """
    if ck.scores and not ck.masks:
        raise PrunekitError(f"{ck.name} holds importance scores but no masks: it is the dense "
                            f"model, scored for pruning; prune it first (prunekit mask "
                            f"--ratio R), then export the result")
    # A checkpoint's state holds its masks' zeros (mask writes them, finetune keeps them).
    exported = onnx.export(ck.build(), batch=batch, opset=opset, decoded=decoded, verify=verify,
                           name=ck.name)
    onnx.write(exported, out)
    return exported
