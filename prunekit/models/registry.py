"""The installed model families: the only way into a family's package.

Families are Python entry points in the group ``prunekit.families`` (pytest's and Typer's plugin
convention): the entry point's name is the family's, its object the :class:`Family`. prunekit's
own two register the same way, in its ``pyproject.toml``::

    [project.entry-points."prunekit.families"]
    yolov3 = "prunekit.models.yolov3:FAMILY"

so a separately installed package adds a detector without editing prunekit (see
``examples/family-plugin/``). A family is imported when first asked for, so a command that
reads one family's checkpoint loads only that family (and its heavy dependencies). What must be
unique across the installed families is checked when all are loaded (:func:`check`, which the
command line runs before any command): family names, member names, and the options each family
adds to ``init`` and ``export``; a clash is refused in one line naming both packages, never
resolved by order.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

import torch

from prunekit.errors import ModelError
from prunekit.models.base import Detector, Family, Option

GROUP = "prunekit.families"
COMMANDS = ("init", "export")
# What a checkpoint written before families were recorded holds.
LEGACY_FAMILY = "yolov3"

_loaded: dict[str, Family] = {}


def _entry_points() -> list[metadata.EntryPoint]:
    """The installed entry points of :data:`GROUP` (tests replace this to uninstall one)."""
    return list(metadata.entry_points(group=GROUP))


def _origin(point: metadata.EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    return f"package {dist.name}" if dist is not None else f"entry point {point.value}"


@functools.cache
def _points() -> dict[str, metadata.EntryPoint]:
    points: dict[str, metadata.EntryPoint] = {}
    for point in _entry_points():
        other = points.get(point.name)
        if other is not None and other.value != point.value:
            raise ModelError(f"two installed packages both provide the model family "
                             f"{point.name!r} ({_origin(other)}: {other.value}; "
                             f"{_origin(point)}: {point.value}); uninstall one of them")
        points[point.name] = point
    return points


def reset() -> None:
    """Forget what was discovered and loaded (after installing or removing a family)."""
    _points.cache_clear()
    _checked.cache_clear()
    _loaded.clear()


def names() -> list[str]:
    """Every installed family's name, sorted."""
    return sorted(_points())


def _installed() -> str:
    return ", ".join(names()) or "none (reinstall prunekit: pip install -e .)"


def get(name: str) -> Family:
    """The installed family called ``name``."""
    points = _points()
    if name not in points:
        raise ModelError(f"model family {name!r} is not installed; installed: {_installed()}; "
                         f"install the package that provides it, or upgrade prunekit")
    if name not in _loaded:
        _loaded[name] = _load(points[name])
    return _loaded[name]


def _load(point: metadata.EntryPoint) -> Family:
    try:
        family = point.load()
    except Exception as e:  # noqa: BLE001  a plugin fails to import in any way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"the model family {point.name!r} ({_origin(point)}: {point.value}) "
                         f"cannot be loaded ({type(e).__name__}: {first}); reinstall or "
                         f"uninstall that package") from None
    if isinstance(family, type) and issubclass(family, Family):
        family = family()
    if not isinstance(family, Family):
        raise ModelError(f"the entry point {point.name!r} ({_origin(point)}) gives "
                         f"{type(family).__name__}, not a prunekit Family; point it at one")
    if family.name != point.name:
        raise ModelError(f"the entry point {point.name!r} ({_origin(point)}) loads the family "
                         f"{family.name!r}; name the entry point after its family")
    return family


def families() -> list[Family]:
    """Every installed family, loaded and checked (:func:`check`)."""
    check()
    return [get(n) for n in names()]


@functools.cache
def _checked() -> bool:
    loaded = [get(n) for n in names()]
    _unique("member", [(f, [(m, m) for m in f.members]) for f in loaded])
    for command in COMMANDS:
        _unique(f"{command} option", [(f, [(o.name, o.flag) for o in f.options(command)])
                                      for f in loaded])
    return True


def check() -> None:
    """Load every installed family and refuse clashes: two families with one member name,
    or one ``init`` or ``export`` option name."""
    _checked()


def _unique(what: str, declared: list[tuple[Family, list[tuple[str, str]]]]) -> None:
    owner: dict[str, Family] = {}
    for family, keys in declared:
        for key, shown in keys:
            first = owner.setdefault(key, family)
            if first is not family:
                a, b = _points()[first.name], _points()[family.name]
                raise ModelError(f"the model families {first.name!r} ({_origin(a)}) and "
                                 f"{family.name!r} ({_origin(b)}) both declare the {what} "
                                 f"{shown}; uninstall one of them")


def options(command: str) -> list[tuple[Family, Option]]:
    """Every installed family's options for ``command`` (``init`` or ``export``), by family."""
    return [(f, o) for f in families() for o in f.options(command)]


def owner(command: str, name: str) -> tuple[Family, Option]:
    """The family that declares the ``command`` option ``name``, and its declaration."""
    for family, option in options(command):
        if option.name == name:
            return family, option
    raise ModelError(f"no installed model family has the {command} option --{name}; "
                     f"installed: {_installed()}")


def members() -> dict[str, Family]:
    """Every member ``prunekit init`` can create, with its family."""
    return {m: f for f in families() for m in f.members}


def family_of(member: str) -> Family:
    """The family a member (e.g. ``yolov3-small``) belongs to."""
    known = members()
    if member not in known:
        raise ModelError(f"unknown architecture {member!r}; choose one of "
                         f"{', '.join(known)} (installed families: {_installed()})")
    return known[member]


def build(family: str, arch: dict[str, Any], input_spec: dict[str, Any],
          classes: list[str]) -> Detector:
    """The module of a checkpoint (random weights; load its state next)."""
    return get(family).build(arch, input_spec, classes)


def skeleton(family: str, arch: dict[str, Any], input_spec: dict[str, Any],
             classes: list[str]) -> Detector:
    """The module without storage (on the meta device): its structure, names and shapes, for
    what needs no weights (prunable names, channel groups), at no cost even for large models."""
    with torch.device("meta"):
        return build(family, arch, input_spec, classes)
