"""Every member in every state it can be in, through every command that takes it.

For each installed family (prunekit's and any plugin), its small member is brought into each
state a user can reach: fresh, imported (where the family exports a format it also imports:
Deformable DETR's `--hf`, the example plugin's `--torchvision`; imports keep frozen parts),
scored, masked, compacted, fine-tuned. Each state goes through every command that accepts a
checkpoint (every score method, mask, finetune, attack, detect, detect under attack, bench,
export to ONNX and to the family's own formats), and each works or refuses in one line: a
traceback is a failure. Nothing here names a family.
"""

from __future__ import annotations

import pytest

from prunekit import checkpoint
from prunekit.cli import app
from prunekit.finetune import TrainConfig, finetune
from prunekit.init import init
from prunekit.mask import PruneConfig, mask
from prunekit.models import registry
from prunekit.score import METHODS, score

CLASSES = ["red-circle", "green-circle", "blue-square", "orange-square", "triangle", "cross"]
STATES = ("fresh", "imported", "scored", "masked", "compacted", "finetuned")
CPU = ["--device", "cpu", "--threads", "1"]


def _round_trip(family) -> str | None:
    """An export format the family also imports (its name), or None."""
    imports = {o.name for o in family.init_options if o.imports}
    return next((o.name for o in family.export_options if o.name in imports), None)


@pytest.fixture(scope="module", params=registry.names())
def states(request, tmp_path_factory, synth_data):
    """(family, {state: checkpoint path}) for the family's small member."""
    family = registry.get(request.param)
    member, args = next(iter(family.small_members().items()))
    root = tmp_path_factory.mktemp(f"states-{family.name}")
    fresh = init(member, names=CLASSES, seed=0, **args)
    made = {"fresh": fresh}
    fmt = _round_trip(family)
    if fmt is not None:
        family.export(fresh.build(), fmt, root / "exported")
        made["imported"] = init(names=CLASSES, img_size=args.get("img_size"),
                                options={fmt: root / "exported"})
    made["scored"] = score(fresh, "l1-filter")
    made["masked"] = mask(made["scored"], PruneConfig(0.5))
    made["compacted"] = mask(made["scored"], PruneConfig(0.5, granularity="filter",
                                                         compact=True))
    made["finetuned"] = finetune(made["masked"], TrainConfig(
        str(synth_data / "train.json"), steps=1, batch_size=4, workers=0, bn_batches=1),
        device="cpu")
    paths = {}
    for state, ck in made.items():
        paths[state] = root / f"{state}.st"
        checkpoint.save(ck, paths[state])
    return family, paths


def _score_settings(method, train):
    """The small run's settings that ``method`` reads (`score` refuses the others)."""
    from prunekit.score import USED_BY

    settings = {"data": ["--data", train], "workers": ["--workers", "0"],
                "steps": ["--steps", "1"], "batches": ["--batches", "1"],
                "batch_size": ["--batch-size", "4"]}
    return [a for name, args in settings.items() if method in USED_BY[name] for a in args]


def _commands(family, synth_data, out):
    """Every command that takes a checkpoint, as arguments after the checkpoint's path."""
    train, val = str(synth_data / "train.json"), str(synth_data / "val.json")
    data = ["--data", train, "--workers", "0", *CPU]
    found = {f"score {m}": ["score", "--method", m, *_score_settings(m, train), *CPU, "-o",
                            str(out / "s.st")] for m in METHODS}
    found.update({
        "mask": ["mask", "--ratio", "0.5", "-o", str(out / "m.st")],
        "mask structured": ["mask", "--structured", "--ratio", "0.5", "--compact", "-o",
                            str(out / "c.st")],
        "finetune": ["finetune", *data, "--steps", "1", "--batch-size", "4", "--adv", "fgsm",
                     "--bn-batches", "1", "-o", str(out / "f.st")],
        "attack": ["attack", "--data", val, "--steps", "1", *CPU, "-o", str(out / "adv")],
        "detect": ["detect", "--data", val, "--conf", "0.001", *CPU],
        "detect attacked": ["detect", "--data", val, "--attack", "pgd", "--steps", "1", *CPU],
        "bench": ["bench", "--runtime", "eager", "--min-time", "0.05", "--threads", "1"],
        "export onnx": ["export", "-o", str(out / "m.onnx")],
    })
    for option in family.export_options:
        found[f"export --{option.name}"] = ["export", f"--{option.name}",
                                            str(out / f"export-{option.name}")]
    return found


# The fine-tuned state is the masked one's architecture, masks and metadata with other weights:
# its ONNX export (the costliest command: about a minute for Deformable DETR on two cores) is
# the masked state's.
_SAME_AS_MASKED = {("finetuned", "export onnx")}


def _run(runner, argv):
    result = runner.invoke(app, argv)
    if result.exit_code == 0:
        return None
    assert isinstance(result.exception, SystemExit), \
        f"{' '.join(argv)}: a traceback ({type(result.exception).__name__}: {result.exception})"
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), \
        f"{' '.join(argv)}: not one line: {result.stderr!r}"
    return lines[0]


@pytest.mark.slow
def test_every_state_through_every_command_works_or_refuses_in_one_line(states, runner,
                                                                       synth_data, tmp_path):
    family, paths = states
    refused = {}
    for state, path in paths.items():
        skeleton = checkpoint.load(path).skeleton()
        for name, argv in _commands(family, synth_data, tmp_path / state).items():
            if (state, name) in _SAME_AS_MASKED:
                continue
            (tmp_path / state).mkdir(exist_ok=True)
            line = _run(runner, [argv[0], str(path), *argv[1:]])
            if line is not None:
                refused[state, name] = line
            # what must work: every state a model is in takes every data-free command, and
            # every score method its family supports
            method = name.split()[1] if name.startswith("score ") else None
            if method is not None and method not in skeleton.refused_scores():
                assert line is None, (state, name, line)
            if name in ("finetune", "attack", "detect", "detect attacked", "bench") or (
                    name == "export onnx" and state != "scored"):  # scored: not yet pruned
                assert line is None, (state, name, line)
            if name == "mask":
                assert (line is None) == (state == "scored"), (state, name, line)
    print(f"{family.name}: {len(refused)} refusals:", *sorted(refused.items()), sep="\n  ")


@pytest.mark.slow
def test_imported_models_score_by_taylor_and_hydra(synth_data, tmp_path, runner):
    """HF's frozen backbone (and the plugin's frozen stem) have no gradient in training; scoring
    asks for one, so every prunable weight is scored, and the parameters stay frozen."""
    for family in registry.families():
        fmt = _round_trip(family)
        if fmt is None:
            continue
        member, args = next(iter(family.small_members().items()))
        fresh = init(member, names=CLASSES, seed=0, **args)
        family.export(fresh.build(), fmt, tmp_path / f"{family.name}-exported")
        imported = init(names=CLASSES, img_size=args.get("img_size"),
                        options={fmt: tmp_path / f"{family.name}-exported"})
        model = imported.build()
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert frozen, f"{family.name}: an import keeps frozen parts"
        path = tmp_path / f"{family.name}.st"
        checkpoint.save(imported, path)
        for method in ("taylor", "hydra"):
            out = tmp_path / f"{family.name}-{method}.st"
            line = _run(runner, ["score", str(path), "--method", method,
                                 *_score_settings(method, str(synth_data / "train.json")),
                                 *CPU, "-o", str(out)])
            assert line is None, (family.name, method, line)
            scored = checkpoint.load(out)
            names = model.prunable()
            assert sorted(scored.scores) == sorted(names), (family.name, method)
            assert any(float(scored.scores[n].sum()) > 0 for n in frozen if n in names)
        assert [n for n, p in checkpoint.load(out).build().named_parameters()
                if not p.requires_grad] == frozen
