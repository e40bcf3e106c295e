"""Options shared by several commands, declared once."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from prunekit.errors import PrunekitError

if TYPE_CHECKING:
    from prunekit.attack import AttackConfig


def _workers(value: int) -> int:
    if value < 0:
        raise PrunekitError(f"--workers must be at least 0 (0 loads data in the main process), "
                            f"got {value}")
    return value


CheckpointArg = Annotated[
    str | None,
    typer.Argument(help="Checkpoint path; `-` or omitted reads stdin.", show_default=False),
]
ModelArg = Annotated[
    str | None,
    typer.Argument(help="Checkpoint, or an .onnx file `prunekit export` wrote; `-` or omitted "
                   "reads stdin.", show_default=False),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("-o", "--output", help="Output path; omitted writes to stdout when it is not a "
                 "terminal.", show_default=False),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")
]
ImgSizeOpt = Annotated[
    int | None,
    typer.Option("--img-size", help="Input size in pixels: YOLOv3's square side (a multiple "
                 "of 32), or Deformable DETR's canvas height (default: the model's).",
                 show_default=False),
]
# An attack's settings: None where left out, so that one given to a command that runs no
# attack is refused (attack_config) rather than ignored; the defaults are AttackConfig's.
EpsOpt = Annotated[float | None, typer.Option("--eps", help="L∞ attack radius, images in [0, "
                                              "1] (default 0.05).", show_default=False)]
AlphaOpt = Annotated[float | None, typer.Option("--alpha", help="Attack (PGD) step size "
                                                "(default 0.02).", show_default=False)]
# PGD steps: `--steps` where the command has no training steps, `--attack-steps` where it has.
StepsOpt = Annotated[int | None, typer.Option("--steps", help="PGD steps (default 5).",
                                              show_default=False)]
AttackStepsOpt = Annotated[int | None, typer.Option("--attack-steps", help="PGD steps (default 5).",
                                                    show_default=False)]
LossOpt = Annotated[str | None, typer.Option("--loss", help="Attack objective: total (default), "
                                             "cls, box or obj (vanishing).",
                                             show_default=False)]
WorkersOpt = Annotated[int, typer.Option("--workers", help="DataLoader worker processes.",
                                         callback=_workers)]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="CPU threads (default: torch's).", show_default=False),
]


def attack_config(method: str | None, *, method_flag: str, steps_flag: str = "--steps",
                  settings_used: bool = False, **given: Any) -> AttackConfig | None:
    """The attack a command's flags ask for, checked: None where ``method`` is None or
    ``none``. ``given`` holds the settings the command offers (``eps``, ``alpha``, ``steps``,
    ``loss``), None where left out (AttackConfig's defaults, the paper's). A setting given with
    no attack to apply it to is refused, not ignored, unless the command uses the settings for
    something else too (``settings_used``: the grid's adversarial evaluation)."""
    from prunekit.attack import PGD_ONLY, AttackConfig

    chosen = {k: v for k, v in given.items() if v is not None}
    flag = {k: steps_flag if k == "steps" else f"--{k}" for k in chosen}
    if method is None or method == "none":
        if not settings_used:
            refuse_flags(list(flag.values()), f"without {method_flag} pgd or fgsm")
        return None
    if method == "fgsm" and not settings_used:
        refuse_flags([flag[k] for k in PGD_ONLY if k in chosen],
                     f"with {method_flag} fgsm (PGD's settings: FGSM takes one step of --eps)")
    return AttackConfig(method=method, **chosen).check(steps_flag, method_flag=method_flag)


def given(ctx: typer.Context, names: Iterable[str]) -> dict[str, str]:
    """Those of the parameters ``names`` that the command line gave (not left at their
    defaults), each with its flag: for settings a command refuses where the rest of the line
    leaves them without effect."""
    params = {p.name: p for p in ctx.command.params}
    flags = {}
    for n in names:
        if getattr(ctx.get_parameter_source(n), "name", None) == "COMMANDLINE":
            p = params[n]  # a --x/--no-x pair is named by the side given
            off = p.secondary_opts and ctx.params.get(n) is False
            flags[n] = p.secondary_opts[0] if off else p.opts[0]
    return flags


def refuse_given(ctx: typer.Context, names: Iterable[str], where: str) -> None:
    """Refuse the flags among ``names`` that the command line gave, as settings that have no
    effect ``where`` (``without --prune-to RATIO``): given, they were meant to do something."""
    refuse_flags(list(given(ctx, names).values()), where)


def refuse_flags(flags: list[str], where: str) -> None:
    """``--a, --b have no effect {where}; leave them out``, for any flags given."""
    if flags:
        one = len(flags) == 1
        raise PrunekitError(f"{', '.join(flags)} {'has' if one else 'have'} no effect {where}; "
                            f"leave {'it' if one else 'them'} out")
