"""Reading and writing checkpoints and data for the commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

from prunekit import checkpoint
from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.files import writable_folder

console = Console(stderr=True, soft_wrap=True)


def read_checkpoint(path: str | None) -> Checkpoint:
    return checkpoint.load(path)


def read_model(path: str | None):  # -> Checkpoint | OnnxFile (imported when needed)
    """A checkpoint, or an ONNX file `prunekit export` wrote (detect and bench take both)."""
    from prunekit.onnxfile import load_model

    return load_model(path)


def write_checkpoint(ck: Checkpoint, output: Path | None) -> None:
    """Write to ``output``, or to stdout unless it is a terminal."""
    if output is None or str(output) == "-":
        refuse_terminal("a checkpoint")
        checkpoint.save(ck, None)
        return
    size = checkpoint.save(ck, output)
    console.print(f"wrote {output} ({size:,} bytes)", highlight=False)


def check_output(output: Path | None, *, what: str | None = None) -> None:
    """Refuse a bad output path before any work, with the message writing it would give: a
    folder, or a file in a folder that does not exist. With ``what`` (e.g. "a checkpoint"), no
    output path means stdout, which must not be a terminal."""
    if output is None or str(output) == "-":
        if what is not None:
            refuse_terminal(what)
        return
    writable_folder(Path(output))


def refuse_terminal(what: str) -> None:
    if sys.stdout.isatty():
        raise PrunekitError(f"refusing to write {what} to a terminal; give -o PATH or pipe the "
                            f"output into another command")


def write_text(text: str, output: Path | None) -> None:
    """Text data to ``output`` (atomically) or stdout."""
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        checkpoint.write_atomic(output, text.encode())


def progress_bar(description: str):
    """A rich progress bar on stderr with a field for live metrics; it renders nothing when
    PRUNEKIT_PROGRESS=0 (`make all-scenarios` with JOBS > 1, whose jobs would garble each
    other's bars; the command's other output is unchanged)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class _Lazy(Progress):
        """Shown from the first update on, so a command that fails on its arguments prints
        its error line alone, without a bar above it."""

        def __enter__(self) -> _Lazy:
            return self

        def __exit__(self, *exc: object) -> None:
            # rich's stop() prints a blank line on a console that is not a terminal even when
            # nothing was shown: an error before the first update would come second
            if self.live.is_started:
                self.stop()

        def update(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 (rich's signature)
            if not self.live.is_started:
                self.start()
            super().update(*args, **kwargs)

    return _Lazy(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                 TimeRemainingColumn(), console=console, redirect_stdout=False,
                 redirect_stderr=False, transient=False,
                 disable=os.environ.get("PRUNEKIT_PROGRESS", "1").strip() == "0")
