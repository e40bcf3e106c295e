"""Writing files so that a failure never leaves a partial one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from prunekit.errors import PrunekitError


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a failure never
    leaves a partial file."""
    path = Path(path)
    if path.is_dir():
        raise PrunekitError(f"{path} is a directory; give a file name for the output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise PrunekitError(f"cannot write {path}: folder {parent} does not exist; create it "
                            f"first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
