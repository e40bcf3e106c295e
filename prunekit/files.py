"""Writing files and folders so that a failure never leaves a partial one: everything is built
beside its destination and renamed into place when complete."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prunekit.errors import PrunekitError


def writable_folder(path: Path) -> Path:
    """The folder ``path`` will be written into; an error when ``path`` is a folder itself or
    its folder does not exist (checked before any work by commands, again when writing)."""
    if path.is_dir():
        raise PrunekitError(f"{path} is a directory; give a file name for the output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise PrunekitError(f"cannot write {path}: folder {parent} does not exist; create it "
                            f"first")
    return parent


def temporary_beside(path: Path) -> tuple[int, str]:
    """An open temporary file (descriptor, name) in ``path``'s folder, for a rename onto
    ``path``; the folder must exist and ``path`` must not be one."""
    parent = writable_folder(path)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a failure never
    leaves a partial file."""
    path = Path(path)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise PrunekitError(f"cannot write {path}: {e.strerror or e} (nothing was written); "
                            f"free some space or choose another place, then run again") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def folder_atomically(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder beside ``out`` for the block to fill; it becomes ``out`` (which must not
    exist, or be empty: the caller checks) when the block ends, and is removed if it fails."""
    target = Path(out).absolute()
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process that had our pid
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if target.exists():
            target.rmdir()  # empty; a rename cannot replace a folder on every platform
        os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise  # not about space: e.g. an input that cannot be read
        raise PrunekitError(f"cannot write {target}: {e.strerror} (nothing was written); "
                            f"free some space or choose another place, then run again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
