"""The Typer application and the one place where errors become exit codes."""

from __future__ import annotations

import re
import sys

import typer
from typer.core import TyperGroup

from prunekit.errors import PrunekitError


class _Group(TyperGroup):
    """Runs a subcommand; a :class:`PrunekitError` (or an unreadable file) becomes one line on
    stderr and exit code 1, never a traceback. Usage errors stay click's (exit code 2)."""

    def invoke(self, ctx):  # noqa: ANN001 (typer's vendored click Context)
        try:
            from prunekit.cli._families import check
            from prunekit.device import keep_freed_memory

            check()  # the installed families, before any command: a clash is one line
            keep_freed_memory()  # large activations reused, not page-faulted in every pass
            return super().invoke(ctx)
        except PrunekitError as e:
            _fail(str(e))
        except BrokenPipeError:
            # The reader of stdout went away (`| head`): not an error of ours.
            sys.stderr.close()
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            _fail("interrupted", code=130)
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            _fail(f"{where}{e.strerror or e}")


def _fail(message: str, code: int = 1) -> None:
    line = " ".join(_unwrap_worker(message).split())
    typer.echo(f"error: {line}", err=True)
    raise SystemExit(code)


def _unwrap_worker(message: str) -> str:
    """The original message of an error a DataLoader worker raised: torch re-raises it in the
    main process with the worker's whole traceback as its message ("Caught DataError in
    DataLoader worker process 0. Original Traceback ... prunekit.errors.DataError: ...")."""
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    lines = message.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        match = re.match(r"[\w.]+: ", lines[i])
        if match:
            return "\n".join([lines[i][match.end():], *lines[i + 1:]])
    return message


HELP = """Make object detectors small, fast and adversarially robust, and measure the trade-off.

Every command reads a checkpoint from a path, or from stdin when the path is `-` or omitted,
and writes to `-o PATH`, or to stdout when stdout is not a terminal, so commands compose in
pipelines. Progress goes to stderr; stdout carries data only.
"""

app = typer.Typer(
    cls=_Group,
    help=HELP,
    epilog="Example: prunekit init yolov3-small --classes 6 | prunekit bench",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

data_app = typer.Typer(
    cls=_Group,
    help="Build datasets: a synthetic one for offline use, or KITTI converted to COCO.",
    epilog="Example: prunekit data synth data/synth --train 3000 --val 500",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from prunekit import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                 callback=_print_version, is_eager=True),
) -> None:
    pass
