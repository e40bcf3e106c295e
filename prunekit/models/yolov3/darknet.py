"""Darknet ``.cfg`` parsing and ``.weights`` reading and writing.

A ``.cfg`` becomes the same ``arch`` layer list the built-in family uses, so the official files
build exactly the modules :func:`prunekit.models.yolov3.arch.build_arch` builds. The
``.weights`` layout: three int32 (major, minor, revision), then ``seen`` as int64 when
major·10 + minor ≥ 2 (else int32), then for each conv layer in cfg order its biases (BatchNorm
beta when batch-normalised), then gamma, running mean and running variance (when
batch-normalised), then the weights in [out, in, k, k] order, all float32 little-endian.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import ModelError
from prunekit.models.yolov3.layers import ConvBlock, conv_layers

_SUPPORTED = {"net", "convolutional", "shortcut", "route", "upsample", "maxpool", "yolo"}


def _sections(text: str, name: str) -> list[tuple[str, dict[str, str], int]]:
    sections: list[tuple[str, dict[str, str], int]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ModelError(f"{name}:{lineno}: section header {line!r} lacks a closing ']'")
            kind = line[1:-1].strip().lower()
            if kind not in _SUPPORTED:
                raise ModelError(f"{name}:{lineno}: section [{kind}] is not supported; prunekit "
                                 f"reads {', '.join(sorted(_SUPPORTED))}")
            sections.append((kind, {}, lineno))
        elif "=" in line:
            if not sections:
                raise ModelError(f"{name}:{lineno}: option {line!r} appears before any section")
            key, value = (s.strip() for s in line.split("=", 1))
            sections[-1][1][key] = value
        else:
            raise ModelError(f"{name}:{lineno}: cannot parse {line!r}; expected key=value or "
                             f"[section]")
    return sections


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.replace(" ", "").split(",") if v]


def parse_cfg(source: str | Path, *, text: str | None = None) -> tuple[dict[str, Any], int]:
    """Read a Darknet ``.cfg``.

    Returns:
        The ``arch`` dict and the input size from the ``[net]`` section.
    """
    name = str(source)
    if text is None:
        try:
            text = Path(source).read_text()
        except OSError as e:
            raise ModelError(f"cannot read {name}: {e.strerror or e}") from None
    sections = _sections(text, name)
    if not sections or sections[0][0] != "net":
        raise ModelError(f"{name}: a Darknet .cfg starts with a [net] section; this one does not")
    net = sections[0][1]
    size = int(net.get("width", 416))
    if int(net.get("height", size)) != size:
        raise ModelError(f"{name}: only square inputs are supported (width {size}, height "
                         f"{net['height']})")
    if int(net.get("channels", 3)) != 3:
        raise ModelError(f"{name}: only 3-channel input is supported (channels={net['channels']})")
    layers: list[dict[str, Any]] = []
    anchors = None
    num_classes = None
    try:
        for kind, o, lineno in sections[1:]:
            i = len(layers)
            if kind == "convolutional":
                size_k = int(o.get("size", 1))
                pad = int(o.get("padding", 0))
                if int(o.get("pad", 0)):
                    pad = size_k // 2
                layers.append({"type": "conv", "filters": int(o["filters"]), "size": size_k,
                               "stride": int(o.get("stride", 1)), "pad": pad,
                               "bn": bool(int(o.get("batch_normalize", 0))),
                               "act": o.get("activation", "logistic")})
                if layers[-1]["act"] not in ("leaky", "linear", "relu"):
                    raise ModelError(f"{name}:{lineno}: activation {layers[-1]['act']!r} is not "
                                     f"supported; use leaky, relu or linear")
            elif kind == "shortcut":
                if o.get("activation", "linear") != "linear":
                    raise ModelError(f"{name}:{lineno}: only linear shortcuts are supported")
                f = int(o["from"])
                layers.append({"type": "shortcut", "from": i + f if f < 0 else f})
            elif kind == "route":
                layers.append({"type": "route",
                               "layers": [i + j if j < 0 else j for j in _ints(o["layers"])]})
            elif kind == "upsample":
                layers.append({"type": "upsample", "stride": int(o.get("stride", 2))})
            elif kind == "maxpool":
                layers.append({"type": "maxpool", "size": int(o.get("size", 2)),
                               "stride": int(o.get("stride", 1))})
            elif kind == "yolo":
                flat = [float(v) for v in o["anchors"].replace(" ", "").split(",") if v]
                pairs = [[flat[k], flat[k + 1]] for k in range(0, len(flat) - 1, 2)]
                if anchors is not None and pairs != anchors:
                    raise ModelError(f"{name}:{lineno}: every [yolo] must share the same anchors")
                anchors = pairs
                c = int(o.get("classes", 80))
                if num_classes is not None and c != num_classes:
                    raise ModelError(f"{name}:{lineno}: every [yolo] must have the same classes")
                num_classes = c
                layers.append({"type": "yolo", "mask": _ints(o["mask"])})
            else:
                raise ModelError(f"{name}:{lineno}: a second [net] section")
    except KeyError as e:
        raise ModelError(f"{name}:{lineno}: [{kind}] lacks its {e.args[0]!r} option") from None
    except ValueError as e:
        raise ModelError(f"{name}:{lineno}: bad number in [{kind}]: {e}") from None
    if anchors is None or num_classes is None:
        raise ModelError(f"{name}: no [yolo] layer; prunekit imports YOLO detectors only")
    arch = {"name": Path(name).stem, "num_classes": num_classes,
            "anchors": [[int(a) if a == int(a) else a for a in p] for p in anchors],
            "layers": layers}
    return arch, size


# ------------------------------------------------------------------------------------ weights


def _conv_tensors(block: ConvBlock) -> list[torch.Tensor]:
    """The tensors of one conv layer in Darknet's file order."""
    if block.bn is not None:
        bn = block.bn
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, block.conv.weight]
    return [block.conv.bias, block.conv.weight]


def expected_weights_bytes(model: nn.Module, major: int = 0, minor: int = 2) -> int:
    """Size in bytes of a ``.weights`` file for this model and header version."""
    header = 12 + (8 if major * 10 + minor >= 2 else 4)
    values = sum(t.numel() for _, b in conv_layers(model) for t in _conv_tensors(b))
    return header + 4 * values


def load_weights(model: nn.Module, data: bytes, name: str = "weights") -> dict[str, int]:
    """Copy a Darknet ``.weights`` file into ``model`` in place.

    Returns:
        The header: ``major``, ``minor``, ``revision``, ``seen``.

    Raises:
        ModelError: when the file is shorter or longer than the model needs.
    """
    if len(data) < 16:
        raise ModelError(f"{name} has {len(data):,} bytes, too short for a Darknet header")
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    wide = major * 10 + minor >= 2
    seen = struct.unpack_from("<q" if wide else "<i", data, 12)[0]
    expected = expected_weights_bytes(model, major, minor)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else f"{len(data) - expected:,} bytes too long"
        raise ModelError(f"{name} has {len(data):,} bytes but this architecture needs "
                         f"{expected:,} ({what}); use the .weights file that belongs to the .cfg")
    values = np.frombuffer(data, dtype="<f4", offset=20 if wide else 16)
    pos = 0
    with torch.no_grad():
        for _, block in conv_layers(model):
            for t in _conv_tensors(block):
                n = t.numel()
                t.copy_(torch.from_numpy(values[pos:pos + n].copy()).view_as(t))
                pos += n
    return {"major": major, "minor": minor, "revision": revision, "seen": int(seen)}


def dump_weights(model: nn.Module, *, major: int = 0, minor: int = 2, revision: int = 0,
                 seen: int = 0) -> bytes:
    """The model's conv layers in Darknet's ``.weights`` byte layout."""
    buf = io.BytesIO()
    buf.write(struct.pack("<3i", major, minor, revision))
    buf.write(struct.pack("<q" if major * 10 + minor >= 2 else "<i", seen))
    for _, block in conv_layers(model):
        for t in _conv_tensors(block):
            buf.write(t.detach().cpu().contiguous().numpy().astype("<f4").tobytes())
    return buf.getvalue()
