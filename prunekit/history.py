"""A checkpoint's history as the commands that made it.

Every command records its settings whole in the output's history (``init``'s arguments, and
the configuration values the others take: :class:`~prunekit.score.ScoreConfig`,
:class:`~prunekit.mask.PruneConfig`, :class:`~prunekit.finetune.TrainConfig`,
:class:`~prunekit.attack.AttackConfig`), so each step's command line can be rebuilt from it
(:func:`commands`): run again as a pipeline, with ``SOURCE_DATE_EPOCH`` set as it was, they give
the same file byte for byte (on the same machine and thread count; the data, by path, must be
unchanged).

A setting is written as its flag when it differs from the configuration's default (every flag's
default is the field's, which a test checks), so the commands stay short; a setting no flag can
give (a library caller's) makes the step impossible to rebuild, and that is said in one line.
"""

from __future__ import annotations

import shlex
from dataclasses import MISSING, fields
from typing import Any

from prunekit.attack import PGD_ONLY, AttackConfig
from prunekit.errors import PrunekitError
from prunekit.finetune import TrainConfig
from prunekit.mask import PruneConfig
from prunekit.score import METHODS, USED_BY, ScoreConfig

# config class → field → flag ("--on/--off" for a bool that has both, "--on" for a flag).
# A field missing here has no flag in that command.
FLAGS: dict[str, dict[type, dict[str, str]]] = {
    "finetune": {
        TrainConfig: {"data": "--data", "steps": "--steps", "epochs": "--epochs",
                      "batch_size": "--batch-size", "lr": "--lr",
                      "weight_decay": "--weight-decay", "warmup": "--warmup",
                      "augment": "--augment/--no-augment", "grey": "--grey/--colour",
                      "img_size": "--img-size", "adv_mix": "--adv-mix", "images": "--images",
                      "val": "--val", "eval_every": "--eval-every",
                      "save_every": "--save-every", "bn_batches": "--bn-batches",
                      "workers": "--workers", "seed": "--seed"},
        AttackConfig: {"method": "--adv", "eps": "--eps", "alpha": "--alpha",
                       "steps": "--attack-steps"},
    },
    "score": {
        ScoreConfig: {"method": "--method", "data": "--data", "images": "--images",
                      "batches": "--batches", "batch_size": "--batch-size",
                      "steps": "--steps", "lr": "--lr", "baseline": "--baseline",
                      "workers": "--workers", "seed": "--seed"},
        PruneConfig: {"ratio": "--ratio", "granularity": "--granularity", "scope": "--scope"},
        AttackConfig: {"method": "--adv", "eps": "--eps", "alpha": "--alpha",
                       "steps": "--attack-steps"},
    },
    "mask": {
        PruneConfig: {"ratio": "--ratio", "granularity": "--granularity", "scope": "--scope",
                      "compact": "--compact", "round_to": "--round-to"},
    },
}
# Fields written whatever their value: required flags, and those whose command-line default
# differs from the configuration's (an attack's method: the command's default is none).
ALWAYS = {(ScoreConfig, "method"), (TrainConfig, "data"), (PruneConfig, "ratio"),
          (AttackConfig, "method")}


def commands(history: list[dict[str, Any]]) -> list[list[str]]:
    """Each step's command line (``prunekit`` and its arguments; each step reads the previous
    one's output on stdin, the first builds the model)."""
    steps = []
    for k, entry in enumerate(history, 1):
        name = entry.get("command")
        if name == "compact" and k > 1 and _compacted(history[k - 2]):
            continue  # mask --compact's own compaction
        build = _BUILDERS.get(name)
        if build is None:
            raise PrunekitError(f"step {k} of the history ({name!r}) is no command prunekit "
                                f"can rebuild")
        try:
            steps.append(build(entry.get("args") or {}))
        except (KeyError, TypeError) as e:
            raise PrunekitError(f"step {k} of the history ({name}) was recorded by prunekit "
                                f"{entry.get('prunekit', '?')} without its settings whole "
                                f"({type(e).__name__}: {e}); its command cannot be rebuilt") \
                from None
    return steps


def pipeline(history: list[dict[str, Any]]) -> str:
    """The commands as one shell pipeline, one step per line (its output goes to stdout)."""
    lines = [shlex.join(argv) for argv in commands(history)]
    return " \\\n  | ".join(lines)


def _compacted(entry: dict[str, Any]) -> bool:
    return entry.get("command") == "mask" and bool(
        (entry.get("args") or {}).get("prune", {}).get("compact"))


def _flags(command: str, kind: type, recorded: dict[str, Any]) -> list[str]:
    """The flags that give ``recorded`` (a configuration of type ``kind``) in ``command``."""
    flags = FLAGS[command][kind]
    out: list[str] = []
    for f in fields(kind):
        value = recorded[f.name]
        if f.default is not MISSING and value == f.default and (kind, f.name) not in ALWAYS:
            continue
        flag = flags.get(f.name)
        if flag is None:
            raise PrunekitError(f"`prunekit {command}` has no flag for the recorded setting "
                                f"{f.name}={value!r} (a library caller's); the step cannot be "
                                f"rebuilt as a command")
        out += _flag(flag, value)
    return out


def _flag(flag: str, value: Any) -> list[str]:
    if "/" in flag:
        on, off = flag.split("/")
        return [on if value else off]
    if isinstance(value, bool):
        return [flag] if value else []
    return [] if value is None else [flag, str(value)]


def _runtime(args: dict[str, Any]) -> list[str]:
    out = ["--device", args["device"]] if args.get("device", "auto") != "auto" else []
    return out + (["--threads", str(args["threads"])] if args.get("threads") else [])


def _init(args: dict[str, Any]) -> list[str]:
    argv = ["prunekit", "init"] + ([args["arch"]] if args["arch"] else [])
    if args.get("dataset"):
        argv += ["--dataset", args["dataset"]]
    elif args["names"]:
        if any("," in n for n in args["names"]):
            raise PrunekitError("the class names hold a comma, which --names cannot give; the "
                                "init step cannot be rebuilt as a command")
        argv += ["--names", ",".join(args["names"])]
    elif args["classes"] is not None:
        argv += ["--classes", str(args["classes"])]
    if args["img_size"] is not None:
        argv += ["--img-size", str(args["img_size"])]
    if args["grey"]:
        argv.append("--grey")
    for name, value in args["options"].items():
        argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return argv + ["--seed", str(args["seed"])]


def _score(args: dict[str, Any]) -> list[str]:
    recorded = dict(args["score"])
    for f in fields(ScoreConfig):  # a setting the method does not read: `score` refuses it
        if recorded["method"] not in USED_BY.get(f.name, METHODS) and f.default is not MISSING:
            recorded[f.name] = f.default
    argv = ["prunekit", "score", *_flags("score", ScoreConfig, recorded)]
    if args["target"] is not None:
        argv += _flags("score", PruneConfig, args["target"])
    if args["attack"] is not None:
        argv += _attack("score", args["attack"])
    return argv + _runtime(args)


def _attack(command: str, recorded: dict[str, Any]) -> list[str]:
    """An attack's flags, less PGD's settings for FGSM (which `command` refuses)."""
    recorded = dict(recorded)
    if recorded["method"] == "fgsm":
        for f in fields(AttackConfig):
            if f.name in PGD_ONLY:
                recorded[f.name] = f.default
    return _flags(command, AttackConfig, recorded)


def _mask(args: dict[str, Any]) -> list[str]:
    return ["prunekit", "mask", *_flags("mask", PruneConfig, args["prune"])]


def _finetune(args: dict[str, Any]) -> list[str]:
    recorded = dict(args["train"])
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    if args["attack"] is None:  # settings without effect: `finetune` refuses them
        recorded["adv_mix"] = defaults["adv_mix"]
    if recorded.get("val") is None:
        recorded["eval_every"] = defaults["eval_every"]
    if recorded.get("steps") is not None:  # steps win over epochs
        recorded["epochs"] = defaults["epochs"]
    argv = ["prunekit", "finetune", *_flags("finetune", TrainConfig, recorded)]
    if args["attack"] is not None:
        argv += _attack("finetune", args["attack"])
    if (args.get("processes") or 1) > 1:
        raise PrunekitError(f"the finetune step ran as {args['processes']} processes "
                            f"(torchrun), which read the checkpoint from a file, not a pipe; "
                            f"rebuild it by hand: torchrun --nproc-per-node "
                            f"{args['processes']} -m prunekit finetune IN.st "
                            f"{shlex.join(argv[2:])} -o OUT.st")
    return argv + _runtime(args)


_BUILDERS = {"init": _init, "score": _score, "mask": _mask, "finetune": _finetune}
