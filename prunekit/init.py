"""Create a detector checkpoint: a family member with fresh weights, or a family's own files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prunekit import checkpoint
from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.models import registry
from prunekit.models.base import Family, default_names


def init(arch: str | None = None, *, classes: int | None = None, names: list[str] | None = None,
         dataset: str | Path | None = None, img_size: int | None = None, grey: bool = False,
         options: dict[str, Any] | None = None, seed: int = 0) -> Checkpoint:
    """Build a detector checkpoint.

    Args:
        arch: a family member (e.g. ``yolov3-small``; :func:`prunekit.models.members`); not
            with options that import files.
        classes: number of classes (or given by ``names`` or ``dataset``).
        names: class names in category-id order.
        dataset: a COCO JSON whose categories give the classes.
        img_size: input size (default: the member's, or the imported files').
        grey: feed the model Rec. 601 grey images (recorded in ``input``).
        options: values of one family's ``init`` options by name (its
            :attr:`~prunekit.models.base.Family.init_options`, e.g. ``{"width": 0.5}`` or
            ``{"cfg": "yolov3.cfg"}``); None and False count as not given.
        seed: seed for the random initialisation.
    """
    options = {k: v for k, v in (options or {}).items() if v is not None and v is not False}
    family, imports = _options_family(arch, options)
    names = _class_names(classes, names, dataset)
    given = names  # what the user named (the history records it), before default names
    if names is None and classes is not None:
        if classes < 1:
            raise PrunekitError(f"--classes must be at least 1, got {classes}")
        names = default_names(classes)
    torch.manual_seed(seed)
    if imports:
        model = family.import_files(options, names, img_size=img_size, grey=grey)
    else:
        if names is None:
            raise PrunekitError("how many classes? give --classes N, --names a,b,... or "
                                "--dataset train.json")
        model = family.create(arch, names, img_size=img_size, grey=grey, options=options)
    ck = checkpoint.from_model(model)
    args: dict[str, Any] = {"arch": arch, "classes": classes, "names": given,
                            "dataset": str(dataset) if dataset is not None else None,
                            "img_size": img_size, "grey": grey,
                            "options": {k: v if isinstance(v, bool | int | float) else str(v)
                                        for k, v in options.items()},
                            "seed": seed}
    return ck.add_history("init", args)


def _options_family(arch: str | None, options: dict[str, Any]) -> tuple[Family, bool]:
    """The family that creates (``arch``) or imports (``options``), and whether it imports;
    options of another family, or of two, are refused."""
    owned = {name: registry.owner("init", name) for name in options}
    families = {f.name for f, _ in owned.values()}
    if len(families) > 1:
        shown = ", ".join(f"--{n} ({f.name})" for n, (f, _) in owned.items())
        raise PrunekitError(f"{shown}: options of different model families; give one "
                            f"family's options")
    imports = any(o.imports for _, o in owned.values())
    if (arch is None) == (not imports):
        flags = ", ".join(o.flag for _, o in registry.options("init") if o.imports)
        raise PrunekitError(f"give either an architecture name or files to import ({flags}), "
                            f"not both or neither (e.g. `prunekit init yolov3-small "
                            f"--classes 6`)")
    if arch is None:
        return next(f for f, _ in owned.values()), True
    family = registry.family_of(arch)
    for name, (other, _) in owned.items():
        if other is not family:
            own = ", ".join(o.flag for o in family.init_options if not o.imports) or "none"
            raise PrunekitError(f"--{name} is an option of the {other.name} family; {arch} is "
                                f"a {family.name} member (its options: {own})")
    return family, False


def _class_names(classes: int | None, names: list[str] | None,
                 dataset: str | Path | None) -> list[str] | None:
    """Class names from ``--names`` or ``--dataset`` (checked against ``--classes``), or
    None."""
    if dataset is not None:
        if names:
            raise PrunekitError("give --dataset or --names, not both")
        from prunekit.data.coco import read_categories

        names = [c["name"] for c in read_categories(dataset)]
    if names is not None:
        if classes is not None and classes != len(names):
            raise PrunekitError(f"--classes {classes} but {len(names)} names were given; drop "
                                f"--classes or give one name per class")
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            where = f"{dataset}'s categories name" if dataset is not None else "--names names"
            raise PrunekitError(f"{where} {twice!r} twice; give each class one name")
        return list(names)
    return None
