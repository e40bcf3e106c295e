"""The options model families add to `prunekit init` and `prunekit export`.

Each installed family declares them (:class:`prunekit.models.base.Option`: name, type, help);
:func:`with_family_options` turns the declarations into the command's flags when the command
line is built, and the command receives the values given as one ``options`` dict. ``--help``
lists them under each family's name. A clash (two families, or a family and the command itself,
with one option name) is refused before any command runs (:func:`check`), in one line.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from prunekit.errors import PrunekitError

# Python parameter name → family name, for every family option of a command (its help).
_OWNERS: dict[str, dict[str, str]] = {}
# Why the family options could not be added (a clash), reported by `check`.
_PROBLEMS: list[PrunekitError] = []


def check() -> None:
    """Refuse, in one line, what made the families' options unusable: raised before any
    command runs."""
    from prunekit.models import registry

    registry.check()
    if _PROBLEMS:
        raise _PROBLEMS[0]


def _declared(command: str, own: set[str]) -> list[tuple[str, Any]]:
    """(family name, option) for every family option of ``command``; none when they clash."""
    from prunekit.models import registry

    try:
        declared = registry.options(command)
    except PrunekitError as e:
        _PROBLEMS.append(e)
        return []
    for family, option in declared:
        if _dest(option.name) in own or not option.name.replace("-", "").isalnum():
            _PROBLEMS.append(PrunekitError(
                f"the model family {family.name!r} declares the {command} option "
                f"{option.flag}, which `prunekit {command}` has itself (or which is not a "
                f"usable flag name); rename it in that family"))
            return []
    return [(family.name, option) for family, option in declared]


def members() -> str:
    """The installed families' members, for ``prunekit init --help``."""
    from prunekit.models import registry

    try:
        return ", ".join(registry.members())
    except PrunekitError:
        return "see the error any command prints"


def _dest(name: str) -> str:
    return name.replace("-", "_")


def _parameter(option: Any) -> inspect.Parameter:
    if option.type is bool:
        annotation = Annotated[bool, typer.Option(option.flag, help=option.help)]
        default: Any = False
    else:
        annotation = Annotated[option.type | None, typer.Option(option.flag, help=option.help,
                                                                show_default=False)]
        default = None
    return inspect.Parameter(_dest(option.name), inspect.Parameter.KEYWORD_ONLY,
                             default=default, annotation=annotation)


def with_family_options(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command function every installed family's ``command`` options as flags; the
    function takes ``options``: the values given, by option name."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != "options"]
        declared = _declared(command, {p.name for p in own})
        _OWNERS[command] = {_dest(o.name): family for family, o in declared}

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given = {o.name: kwargs.pop(_dest(o.name)) for _, o in declared}
            return fn(**kwargs, options={k: v for k, v in given.items()
                                         if v is not None and v is not False})

        extra = [_parameter(o) for _, o in declared]
        wrapper.__signature__ = signature.replace(parameters=[*own, *extra])  # type: ignore
        wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *extra]}
        return wrapper

    return decorate


class FamilyOptionsCommand(TyperCommand):
    """A command whose ``--help`` lists its own options, then each family's."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        owners = _OWNERS.get(self.name or "", {})
        args, opts, by_family = [], [], {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append(record)
            elif param.name in owners:
                by_family.setdefault(owners[param.name], []).append(record)
            else:
                opts.append(record)
        for title, rows in [("Arguments", args), ("Options", opts),
                            *((f"Options of the {f} family", r) for f, r in by_family.items())]:
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
