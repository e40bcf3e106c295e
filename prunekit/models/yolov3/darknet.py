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
    try:
        size = _input_size(sections[0][1], name)
    except ValueError as e:
        raise ModelError(f"{name}:{sections[0][2]}: bad number in [net]: {e}") from None
    layers: list[dict[str, Any]] = []
    heads: list[tuple[list[list[float]], int]] = []
    for kind, options, lineno in sections[1:]:
        where = f"{name}:{lineno}"
        try:
            layer = _layer(kind, options, len(layers), where)
            if kind == "yolo":
                heads.append(_head(options, heads, where))
        except KeyError as e:
            raise ModelError(f"{where}: [{kind}] lacks its {e.args[0]!r} option") from None
        except ValueError as e:
            raise ModelError(f"{where}: bad number in [{kind}]: {e}") from None
        layers.append(layer)
    if not heads:
        raise ModelError(f"{name}: no [yolo] layer; prunekit imports YOLO detectors only")
    anchors, num_classes = heads[0]
    _check_sizes(name, sections[1:], layers, anchors, size)
    arch = {"name": Path(name).stem, "num_classes": num_classes,
            "anchors": [[int(a) if a == int(a) else a for a in p] for p in anchors],
            "layers": layers}
    return arch, size


# More weights than this is a typo in a filters= or size= (yolov3.cfg has 62 million), and
# building it would exhaust memory before anything could say so.
MAX_PARAMETERS = 2_000_000_000


def _check_sizes(name: str, sections: list[tuple[str, dict[str, str], int]],
                 layers: list[dict[str, Any]], anchors: list[list[float]], size: int) -> None:
    """Every count, kernel, stride and mask index in range, and the weights a sane number,
    before any tensor is built."""
    channels: list[int] = []
    c, total = 3, 0
    for i, ((kind, _, lineno), layer) in enumerate(zip(sections, layers, strict=True)):
        where = f"{name}:{lineno}"
        for key, most in (("filters", 65536), ("size", size), ("stride", size)):
            if key in layer and not 1 <= layer[key] <= max(most, 1):
                raise ModelError(f"{where}: [{kind}] {key}={layer[key]} is out of range; give "
                                 f"a whole number from 1 to {max(most, 1)}")
        if layer.get("pad", 0) < 0:
            raise ModelError(f"{where}: [{kind}] padding={layer['pad']} is negative; give 0 or "
                             f"more")
        if kind == "convolutional":
            total += layer["filters"] * (c * layer["size"] ** 2 + 4)
            c = layer["filters"]
        elif kind == "route":
            refs = [j for j in layer["layers"] if 0 <= j < i]
            c = sum(channels[j] for j in refs) if len(refs) == len(layer["layers"]) else c
        elif kind == "yolo":
            bad = [k for k in layer["mask"] if not 0 <= k < len(anchors)]
            if bad:
                raise ModelError(f"{where}: [yolo] mask index {bad[0]} has no anchor (there are "
                                 f"{len(anchors)}); give indices 0 to {len(anchors) - 1}")
        if total > MAX_PARAMETERS:
            raise ModelError(f"{where}: the layers so far hold {total:,} weights, more than "
                             f"{MAX_PARAMETERS:,} (yolov3.cfg has 62 million); check filters= "
                             f"and size=")
        channels.append(c)


def _input_size(net: dict[str, str], name: str) -> int:
    size = int(net.get("width", 416))
    if int(net.get("height", size)) != size:
        raise ModelError(f"{name}: only square inputs are supported (width {size}, height "
                         f"{net['height']})")
    if int(net.get("channels", 3)) != 3:
        raise ModelError(f"{name}: only 3-channel input is supported (channels={net['channels']})")
    return size


def _layer(kind: str, o: dict[str, str], i: int, where: str) -> dict[str, Any]:
    """Section ``[kind]`` as layer ``i`` of an ``arch`` layer list."""
    if kind == "convolutional":
        size = int(o.get("size", 1))
        pad = size // 2 if int(o.get("pad", 0)) else int(o.get("padding", 0))
        act = o.get("activation", "logistic")
        if act not in ("leaky", "linear", "relu"):
            raise ModelError(f"{where}: activation {act!r} is not supported; use leaky, relu "
                             f"or linear")
        return {"type": "conv", "filters": int(o["filters"]), "size": size,
                "stride": int(o.get("stride", 1)), "pad": pad,
                "bn": bool(int(o.get("batch_normalize", 0))), "act": act}
    if kind == "shortcut":
        if o.get("activation", "linear") != "linear":
            raise ModelError(f"{where}: only linear shortcuts are supported")
        f = int(o["from"])
        return {"type": "shortcut", "from": i + f if f < 0 else f}
    if kind == "route":
        return {"type": "route", "layers": [i + j if j < 0 else j for j in _ints(o["layers"])]}
    if kind == "upsample":
        return {"type": "upsample", "stride": int(o.get("stride", 2))}
    if kind == "maxpool":
        return {"type": "maxpool", "size": int(o.get("size", 2)), "stride": int(o.get("stride", 1))}
    if kind == "yolo":
        return {"type": "yolo", "mask": _ints(o["mask"])}
    raise ModelError(f"{where}: a second [net] section")


def _head(o: dict[str, str], earlier: list[tuple[list[list[float]], int]],
          where: str) -> tuple[list[list[float]], int]:
    """A ``[yolo]`` section's anchors and class count, which every head must share."""
    flat = [float(v) for v in o["anchors"].replace(" ", "").split(",") if v]
    anchors = [[flat[k], flat[k + 1]] for k in range(0, len(flat) - 1, 2)]
    classes = int(o.get("classes", 80))
    if not (anchors and all(0 < a < float("inf") for pair in anchors for a in pair)):
        raise ModelError(f"{where}: [yolo] anchors={o['anchors']!r}; give positive width,height "
                         f"pairs in pixels")
    if len(flat) % 2:
        raise ModelError(f"{where}: [yolo] has {len(flat)} anchor numbers; give width,height "
                         f"pairs (an even count)")
    if not 1 <= classes <= 100_000:
        raise ModelError(f"{where}: [yolo] classes={classes} is out of range; give at least 1")
    if earlier and anchors != earlier[0][0]:
        raise ModelError(f"{where}: every [yolo] must share the same anchors")
    if earlier and classes != earlier[0][1]:
        raise ModelError(f"{where}: every [yolo] must have the same classes")
    return anchors, classes


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
    if wide and len(data) < 20:
        raise ModelError(f"{name} has {len(data):,} bytes, too short for a Darknet header of "
                         f"version {major}.{minor} (20 bytes)")
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
