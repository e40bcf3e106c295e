"""prunekit's one file container: safetensors bytes with a digest, read and written here only.

Checkpoints (:mod:`prunekit.checkpoint`) and the training-state files of ``finetune`` are both
this container: tensors plus string metadata, in safetensors' layout (an 8-byte little-endian
header length, the JSON header, the tensor payload). Writing sorts the header (safetensors writes
it in an order that changes from run to run; the same content must give the same bytes) and adds
the digest; reading checks the container (header length, JSON, tensor offsets inside the file)
before anything is decoded, and the digest while it is.

**The digest** (the ``digest`` metadata, ``crc32x16m:<8 hex digits>``) is the CRC-32 of the
CRC-32s of the header's content (every tensor's dtype, shape and offsets and every other
metadata value, as sorted JSON) and of each 16 MiB piece of the tensor payload. A changed bit
changes its piece's CRC, and so the digest, with certainty: CRC-32 detects every single-bit
error and every burst of up to 32 bits (a property of the polynomial, not a probability). zlib
computes it at several GB/s without the interpreter lock, so the pieces are checked on other
threads while the file is decoded, and nothing decoded is returned before the check has passed:
damaged bytes are reported, never used. It guards against damage, not tampering (anyone can
recompute it). Files written before digests were recorded load without the check.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor

from prunekit.errors import CheckpointError

DIGEST = "digest"
_PIECE = 16 * 2**20


class ContainerError(CheckpointError):
    """Bytes that are not a whole, undamaged container: ``problem`` says what, ``fix`` what to
    do (a caller with a better fix, such as ``finetune --resume``, gives its own)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix


# ------------------------------------------------------------------------------------ write


def to_bytes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """The container of ``tensors`` (contiguous CPU tensors) and ``metadata``, with its
    digest; the same content gives the same bytes."""
    # safetensors refuses tensors that share storage; give each its own.
    tensors = dict(tensors)
    seen: set[int] = set()
    for k, v in tensors.items():
        if v.untyped_storage().data_ptr() in seen:
            tensors[k] = v.clone()
        seen.add(tensors[k].untyped_storage().data_ptr())
    return sign(_st_save(tensors, metadata=metadata))


def sign(data: bytes) -> bytes:
    """safetensors bytes with the digest added to their metadata and the header sorted (the
    payload is unchanged: tensor offsets count from the end of the header)."""
    header, start = _header(data)
    header.setdefault("__metadata__", {})[DIGEST] = _content_crc(header,
                                                                 memoryview(data)[start:])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors keeps the payload 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data[start:]


# ------------------------------------------------------------------------------------- read


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), 8 + n


def header(data: bytes, name: str) -> tuple[dict[str, Any], int]:
    """The checked header of ``data`` (a whole safetensors container: its length, JSON and
    tensor offsets fit the bytes) and where its payload starts."""
    if len(data) < 8:
        raise ContainerError(f"{name} is truncated: {len(data)} bytes, less than a safetensors "
                             f"header", "write it again")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ContainerError(f"{name} is truncated or not safetensors: its header claims "
                             f"{n:,} bytes but the file has {len(data):,}", "write it again")
    try:
        head = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ContainerError(f"{name} is not a safetensors file (its header is not JSON)",
                             "is it the right file?") from None
    if not isinstance(head, dict):
        raise ContainerError(f"{name} is not a safetensors file (its header is not a table)",
                             "is it the right file?")
    spans = [v.get("data_offsets") for k, v in head.items()
             if k != "__metadata__" and isinstance(v, dict)]
    if not all(isinstance(s, list) and len(s) == 2 and all(type(o) is int and o >= 0 for o in s)
               for s in spans):
        raise ContainerError(f"{name} is a corrupt safetensors file (a tensor's data offsets "
                             f"are not two byte positions)", "write it again")
    end = max((s[1] for s in spans), default=0)
    if 8 + n + end > len(data):
        raise ContainerError(f"{name} is truncated: expected {8 + n + end:,} bytes, found "
                             f"{len(data):,}", "write it again")
    return head, 8 + n


def metadata(data: bytes, name: str) -> dict[str, str]:
    """The metadata of checked container bytes (empty when there is none)."""
    meta = header(data, name)[0].get("__metadata__")
    return dict(meta) if isinstance(meta, dict) else {}


def verify(data: bytes, name: str) -> None:
    """Refuse bytes whose content no longer matches the digest written with them (bytes
    without a digest pass: written before digests were recorded)."""
    head, start = _header(data)
    meta = head.get("__metadata__")
    recorded = meta.get(DIGEST) if isinstance(meta, dict) else None
    if recorded is None:
        return
    if not isinstance(recorded, str) or not recorded.startswith("crc32x16m:"):
        raise ContainerError(f"{name} records a digest prunekit does not know ({recorded!r})",
                             "write it again, or upgrade prunekit if a newer one wrote it")
    if _content_crc(head, memoryview(data)[start:]) != recorded:
        raise ContainerError(f"{name} is damaged: its bytes no longer match the checksum "
                             f"written with them ({recorded})",
                             "restore it from a copy or write it again")


def from_bytes(data: bytes, name: str, *,
               check_digest: bool = True) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of container bytes: the container checked first, the digest
    on another thread while the tensors are decoded (nothing is returned unless it passes)."""
    header(data, name)
    if not check_digest:
        return _decode(data, name)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        check = pool.submit(verify, data, name)
        try:
            decoded = _decode(data, name)
        except Exception:
            check.result()  # damage explains any decoding error best: say that first
            raise
        check.result()
    return decoded


def _decode(data: bytes, name: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        tensors = _st_load(data)
        meta = _header(data)[0].get("__metadata__") or {}
    except Exception as e:  # safetensors raises its own error types
        raise ContainerError(f"{name} is a corrupt safetensors file ({one_line(e)})",
                             "write it again") from None
    return tensors, meta


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _content_crc(head: dict[str, Any], payload: memoryview | bytes) -> str:
    """``crc32x16m:…`` of the header's content (without its digest) and the payload's pieces."""
    from concurrent.futures import ThreadPoolExecutor

    content = dict(head)
    meta = dict(content.get("__metadata__") or {}) if isinstance(content.get("__metadata__"),
                                                                dict) else {}
    meta.pop(DIGEST, None)
    content["__metadata__"] = meta
    crcs = [zlib.crc32(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())]
    pieces = [payload[i:i + _PIECE] for i in range(0, len(payload), _PIECE)]
    if len(pieces) > 1:
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            crcs += pool.map(zlib.crc32, pieces)
    else:
        crcs += [zlib.crc32(p) for p in pieces]
    return f"crc32x16m:{zlib.crc32(struct.pack(f'<{len(crcs)}I', *crcs)):08x}"
