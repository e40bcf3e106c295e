"""Self-describing safetensors checkpoints: load and save from a path or stdin/stdout.

A checkpoint holds the model's state dict, optional ``scores.<name>`` (float32, the parameter's
shape) and optional ``masks.<name>``, plus string metadata whose values are JSON: ``prunekit``
(format version), ``family`` (the model family; a file without it is read as ``yolov3``, the only
family before families were recorded), ``arch``, ``classes``, ``input``, ``history``.

Storage decisions:

* Masks are stored packed, one bit per weight (``uint8``, ``numpy.packbits`` order, the shape in
  the ``layout`` metadata), so a mask costs 1/32 of its float32 weight.
* A float32 tensor is stored sparsely when that is smaller: its kept values as a 1-D tensor
  ``sparse.<name>`` plus a bitmap saying where they go. When the tensor has a mask and is zero
  wherever the mask is, the mask *is* the bitmap and is stored once; otherwise the bitmap of
  non-zero values is stored as ``nonzero.<name>``. Every value is restored bit for bit, with one
  deliberate exception: a zero left out of the bitmap comes back as ``+0.0`` even if it was
  ``-0.0`` (multiplying a negative weight by a 0 mask makes ``-0.0``; keeping its sign bit would
  cost a stored value per pruned weight, and ``-0.0 == 0.0`` in every computation).
* Loading never unpickles anything: safetensors only, and a pickle or ``torch.save`` file is
  refused by name.
* Integrity: every checkpoint carries a digest of its bytes, written and checked by the one
  reader and writer of prunekit's container (:mod:`prunekit.container`, shared with the
  training-state files): damaged bytes are reported, never used; files written before digests
  were recorded load without the check.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from prunekit import container
from prunekit.errors import CheckpointError, PrunekitError
from prunekit.files import write_atomic
from prunekit.models import registry
from prunekit.models.base import Detector

FORMAT_VERSION = "1"
Source = str | os.PathLike | bytes | None


@dataclass
class Checkpoint:
    """Everything a checkpoint file holds, unpacked.

    Attributes:
        state: the model's state dict (dense tensors).
        arch: the architecture, as its family describes it.
        classes: class names in category-id order.
        input: input size, colour mode and normalisation.
        history: one entry per command applied.
        masks: boolean keep-masks keyed by state-dict name (True = kept).
        scores: importance scores keyed by state-dict name.
        family: the model family (:mod:`prunekit.models.registry`).
        name: where it was read from, for messages.
        stored_bytes: the size of the file it was read from.
    """

    state: dict[str, Tensor]
    arch: dict[str, Any]
    classes: list[str]
    input: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    masks: dict[str, Tensor] = field(default_factory=dict)
    scores: dict[str, Tensor] = field(default_factory=dict)
    family: str = registry.LEGACY_FAMILY
    name: str = "checkpoint"
    stored_bytes: int | None = None

    def build(self) -> Detector:
        """The detector with these weights, in eval mode."""
        model = registry.build(self.family, self.arch, self.input, self.classes)
        missing, unexpected = model.load_state_dict(self.state, strict=False)
        if missing or unexpected:
            detail = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}")
            raise CheckpointError(f"{self.name}: weights do not fit its architecture "
                                  f"({detail}, {len(missing)} missing, {len(unexpected)} "
                                  f"unexpected); the file was not written by this prunekit")
        return model.eval()

    def skeleton(self) -> Detector:
        """The detector's structure without weights (meta device where the family allows):
        prunable names, channel groups and shapes. Kept for the same family, arch, input and
        classes, so asking again costs nothing."""
        key = json.dumps([self.family, self.arch, self.input, self.classes], sort_keys=True)
        cached = getattr(self, "_skeleton", None)
        if cached is None or cached[0] != key:
            cached = (key, registry.skeleton(self.family, self.arch, self.input, self.classes))
            self._skeleton = cached
        return cached[1]

    def with_model(self, model: nn.Module) -> Checkpoint:
        """A copy whose state, arch and input come from ``model`` (masks and scores kept)."""
        new = copy.copy(self)
        new.state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        new.arch = copy.deepcopy(getattr(model, "arch", self.arch))
        new.input = dict(getattr(model, "input_spec", self.input))
        new.history = list(self.history)
        return new

    def add_history(self, command: str, args: dict[str, Any]) -> Checkpoint:
        """Append an entry for ``command`` with its resolved arguments (in place)."""
        from prunekit import __version__

        self.history = [*self.history, {
            "command": command, "args": _jsonable(args), "prunekit": __version__,
            "time": _now().isoformat(timespec="seconds")}]
        return self


def _now() -> _dt.datetime:
    """The time a history entry records: ``SOURCE_DATE_EPOCH`` (seconds since 1970, the
    reproducible-builds convention) when it is set, so that a command run again with the same
    inputs and seed writes the same bytes; the current time otherwise."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        return _dt.datetime.now(_dt.timezone.utc)
    try:
        return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise PrunekitError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds since "
                            f"1970; set it to e.g. $(git log -1 --format=%ct) or unset it") \
            from None


def from_model(model: Detector, *, history: list[dict[str, Any]] | None = None,
               masks: dict[str, Tensor] | None = None,
               scores: dict[str, Tensor] | None = None) -> Checkpoint:
    """A checkpoint of a :class:`~prunekit.models.Detector`."""
    return Checkpoint(state={k: v.detach().cpu() for k, v in model.state_dict().items()},
                      arch=copy.deepcopy(model.arch), classes=list(model.classes),
                      input=dict(model.input_spec), history=list(history or []),
                      masks=dict(masks or {}), scores=dict(scores or {}),
                      family=model.family)


# ------------------------------------------------------------------------------------- encode


def _pack(mask: Tensor) -> Tensor:
    return torch.from_numpy(np.packbits(mask.reshape(-1).numpy().astype(np.uint8)))


def _unpack(packed: Tensor, shape: list[int], name: str) -> Tensor:
    n = int(np.prod(shape)) if shape else 1
    if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
        raise CheckpointError(f"{name}: a packed mask has {packed.numel()} bytes, expected "
                              f"{(n + 7) // 8}; the file is corrupt")
    bits = np.unpackbits(packed.numpy(), count=n).astype(bool)
    return torch.from_numpy(bits).view(shape)


def encode(ck: Checkpoint) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata that represent ``ck`` in a safetensors file."""
    tensors: dict[str, Tensor] = {}
    layout: dict[str, Any] = {"masks": {}, "sparse": {}}
    for name, m in ck.masks.items():
        if name not in ck.state:
            raise CheckpointError(f"mask for {name!r} has no tensor of that name in the model")
        if m.shape != ck.state[name].shape:
            raise CheckpointError(f"mask for {name!r} has shape {list(m.shape)}, the tensor "
                                  f"{list(ck.state[name].shape)}")
        m = m.detach().cpu().bool()
        tensors[f"masks.{name}"] = _pack(m)
        layout["masks"][name] = list(m.shape)
    for name, t in ck.state.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.float32 and t.numel() >= 64:
            nz = t != 0
            mask = ck.masks.get(name)
            bitmap, kind = nz, "nonzero"
            if mask is not None and not (nz & ~mask.bool()).any():
                bitmap, kind = mask.bool(), "mask"
            kept = int(bitmap.sum())
            sparse_bytes = kept * 4 + (0 if kind == "mask" else (t.numel() + 7) // 8)
            if sparse_bytes < t.numel() * 4:
                tensors[f"sparse.{name}"] = t.reshape(-1)[bitmap.reshape(-1)].clone()
                if kind == "nonzero":
                    tensors[f"nonzero.{name}"] = _pack(bitmap)
                layout["sparse"][name] = {"shape": list(t.shape), "bitmap": kind}
                continue
        tensors[name] = t
    for name, s in ck.scores.items():
        tensors[f"scores.{name}"] = s.detach().cpu().float().contiguous()
    meta = {
        "prunekit": FORMAT_VERSION,
        "family": ck.family,
        "arch": json.dumps(ck.arch, separators=(",", ":")),
        "classes": json.dumps(ck.classes),
        "input": json.dumps(ck.input),
        "history": json.dumps(ck.history),
        "layout": json.dumps(layout, separators=(",", ":")),
    }
    return tensors, meta


def to_bytes(ck: Checkpoint) -> bytes:
    """The checkpoint as container bytes (safetensors with a digest)."""
    return container.to_bytes(*encode(ck))


# --------------------------------------------------------------------------------------- read


def looks_like_onnx(data: bytes, name: str = "") -> bool:
    """Whether ``data`` is meant as an ONNX file: named ``.onnx``, or a protobuf that starts as
    a ModelProto does (field 1, ``ir_version``), where a safetensors file has its header's
    length and then ``{``."""
    if data[8:9] == b"{":
        return False
    return name.lower().endswith(".onnx") or data[:1] == b"\x08"


def _check_container(data: bytes, name: str) -> None:
    """What a checkpoint's reader can say better than the container: an empty file, an ONNX
    file (which only the commands that run models take), and a pickle (never loaded)."""
    if not data:
        raise CheckpointError(f"{name} is empty; expected a prunekit safetensors checkpoint "
                              f"(create one with `prunekit init`)")
    if looks_like_onnx(data, name):
        raise CheckpointError(f"{name} is an ONNX file, not a prunekit checkpoint: this "
                              f"command reads checkpoints; give the checkpoint it was exported "
                              f"from (`detect` and `bench` take ONNX files)")
    looks_safetensors = data[8:9] == b"{"
    if not looks_safetensors and (data[:4] == b"PK\x03\x04" or (
            data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))):
        raise CheckpointError(f"{name} is a pickle / torch.save file, which prunekit never loads "
                              f"(unpickling runs code); convert it to safetensors, or import "
                              f"Darknet files with `prunekit init --cfg`")


def _unpack_layout(raw: dict[str, Tensor], layout: Any,
                   name: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The masks and the sparsely stored tensors ``layout`` describes (taken out of ``raw``)."""
    masks: dict[str, Tensor] = {}
    for pname, shape in layout.get("masks", {}).items():
        masks[pname] = _unpack(raw.pop(f"masks.{pname}"), shape, name)
    state: dict[str, Tensor] = {}
    for pname, info in layout.get("sparse", {}).items():
        values = raw.pop(f"sparse.{pname}")
        shape = info["shape"]
        bitmap = masks[pname] if info["bitmap"] == "mask" else \
            _unpack(raw.pop(f"nonzero.{pname}"), shape, name)
        if list(bitmap.shape) != list(shape):  # before allocating what the layout claims
            raise CheckpointError(f"{name}: sparse tensor {pname!r} has shape {shape} but its "
                                  f"bitmap {list(bitmap.shape)}; the file is corrupt")
        if int(bitmap.sum()) != values.numel():
            raise CheckpointError(f"{name}: sparse tensor {pname!r} has {values.numel()} values "
                                  f"for {int(bitmap.sum())} places; the file is corrupt")
        dense = torch.zeros(shape, dtype=values.dtype)
        dense.view(-1)[bitmap.reshape(-1)] = values
        state[pname] = dense
    return masks, state


def _layer_order(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``a.2.*`` before ``a.10.*`` (numbers compare as numbers)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in name.split("."))


def _in_layer_order(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: tensors[k] for k in sorted(tensors, key=_layer_order)}


def from_bytes(data: bytes, name: str = "checkpoint", *, verify: bool = True) -> Checkpoint:
    """Decode container bytes into a :class:`Checkpoint` (the digest checked unless
    ``verify`` is False).

    ``state``, ``masks`` and ``scores`` come in layer order (``a.2`` before ``a.10``),
    the same at every load: safetensors hands tensors back in an order that changes from one
    load to the next, and whatever walks the prunable weights in turn (a seeded ``random``
    score, a global threshold's ties) must see them in one order.
    """
    _check_container(data, name)
    raw, meta = container.from_bytes(data, name, check_digest=verify)
    if "prunekit" not in meta:
        raise CheckpointError(f"{name} is safetensors but not a prunekit checkpoint (no "
                              f"'prunekit' metadata); create one with `prunekit init`")
    if meta["prunekit"] != FORMAT_VERSION:
        raise CheckpointError(f"{name} has checkpoint format {meta['prunekit']!r}; this prunekit "
                              f"reads format {FORMAT_VERSION}; upgrade prunekit")
    try:
        arch = json.loads(meta["arch"])
        classes = json.loads(meta["classes"])
        input_spec = json.loads(meta["input"])
        history = json.loads(meta.get("history", "[]"))
        layout = json.loads(meta.get("layout", '{"masks": {}, "sparse": {}}'))
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{name}: metadata {e} is missing or not JSON; the file is "
                              f"corrupt") from None
    try:
        masks, state = _unpack_layout(raw, layout, name)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{name}: its layout metadata is corrupt ({type(e).__name__}: "
                              f"{container.one_line(e)}); write it again") from None
    scores = {}
    for key in list(raw):
        if key.startswith("scores."):
            scores[key[len("scores."):]] = raw.pop(key)
    state.update(raw)
    family = meta.get("family", registry.LEGACY_FAMILY)
    if family not in registry.names():
        raise CheckpointError(f"{name} holds a {family!r} model, a family that is not "
                              f"installed (installed: {', '.join(registry.names())}); install "
                              f"the package that provides it, or upgrade prunekit")
    return Checkpoint(state=_in_layer_order(state), arch=arch, classes=classes,
                      input=input_spec, history=history, masks=_in_layer_order(masks),
                      scores=_in_layer_order(scores), family=family, name=name,
                      stored_bytes=len(data))


# -------------------------------------------------------------------------------------- files


def read_bytes(source: Source, *, stdin: BinaryIO | None = None) -> tuple[bytes, str]:
    """Bytes and a display name from a path, raw bytes, or stdin (``-`` or ``None``)."""
    if isinstance(source, bytes | bytearray):
        return bytes(source), "<bytes>"
    if source is None or str(source) == "-":
        stream = stdin or sys.stdin.buffer
        if stdin is None and sys.stdin.isatty():
            raise CheckpointError("no checkpoint given and stdin is a terminal; pass a file or "
                                  "pipe one in (e.g. `prunekit init ... | prunekit bench`)")
        return stream.read(), "<stdin>"
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; check the path") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None


def load(source: Source = None, *, stdin: BinaryIO | None = None) -> Checkpoint:
    """Read a checkpoint from a path, bytes, or stdin (``-`` or ``None``)."""
    data, name = read_bytes(source, stdin=stdin)
    return from_bytes(data, name)


def save(ck: Checkpoint, dest: str | os.PathLike | None = None, *,
         stdout: BinaryIO | None = None) -> int:
    """Write a checkpoint to ``dest`` atomically, or to stdout for ``None`` / ``-``.

    Returns:
        The number of bytes written.
    """
    data = to_bytes(ck)
    if dest is None or str(dest) == "-":
        stream = stdout or sys.stdout.buffer
        stream.write(data)
        stream.flush()
    else:
        write_atomic(dest, data)
    return len(data)


# ------------------------------------------------------------------------------- public API


def load_model(path_or_bytes: Source) -> nn.Module:
    """Load a detector from a checkpoint path, its bytes, or stdin (``-``).

    The model is in eval mode; ``forward`` takes N×3×H×W floats in [0, 1] at the model's input
    size and returns the raw head outputs. Masks, when present, are in ``model.masks``.
    """
    ck = load(path_or_bytes)
    model = ck.build()
    model.masks = ck.masks
    return model


def save_model(model: nn.Module, path: str | os.PathLike | None, *,
               masks: dict[str, Tensor] | None = None, scores: dict[str, Tensor] | None = None,
               history: list[dict[str, Any]] | None = None) -> int:
    """Save a detector (built by prunekit) to ``path``, or stdout for ``None`` / ``-``.

    Returns:
        The number of bytes written.
    """
    if not isinstance(model, Detector):
        raise PrunekitError("save_model needs a prunekit detector (it carries its family, "
                            "arch, classes and input); build one with `prunekit init` or "
                            "prunekit.models.get(family).create(...)")
    masks = masks if masks is not None else getattr(model, "masks", None)
    return save(from_model(model, history=history, masks=masks, scores=scores), path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
