"""history: each step's settings are recorded whole, so `prunekit history --command` rebuilds
the commands, and running them again writes the same bytes."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from prunekit import checkpoint
from prunekit.attack import AttackConfig
from prunekit.cli import app
from prunekit.errors import PrunekitError
from prunekit.history import ALWAYS, FLAGS, commands, pipeline
from tests.conftest import tiny_checkpoint

BIN = Path(sys.executable).parent


def test_every_flag_defaults_to_its_settings_default():
    """A setting at its configuration's default is left out of a rebuilt command, so the flag
    must default to the same value."""
    import typer.main

    group = typer.main.get_command(app)
    for command, kinds in FLAGS.items():
        params = {o: p for p in group.commands[command].params for o in p.opts}
        for kind, flags in kinds.items():
            for f in fields(kind):
                if f.name not in flags or f.default is MISSING or (kind, f.name) in ALWAYS:
                    continue
                param = params[flags[f.name].split("/")[0]]
                default = param.default
                if (command, f.name) == ("mask", "granularity"):
                    assert default is None  # none given: weight, or filter with --structured
                    continue
                if kind is AttackConfig and default is None:
                    # left out, an attack setting takes the configuration's default (refused
                    # without an attack: cli._options.attack_config); the help names it
                    assert f"(default {f.default})" in param.help, (command, f.name)
                    continue
                if isinstance(f.default, float) and default is not None:
                    default = float(default)
                assert default == f.default, (command, kind.__name__, f.name, default)


@pytest.mark.slow
def test_the_commands_of_a_pipeline_write_the_same_bytes_again(synth_data, tmp_path):
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1767225600", "OMP_NUM_THREADS": "1",
           "PATH": f"{BIN}:{os.environ['PATH']}", "PRUNEKIT_PROGRESS": "0"}
    train = shlex.quote(str(synth_data / "train.json"))
    cpu = "--workers 0 --device cpu --threads 1"
    original = (f"prunekit init yolov3-small --dataset {train} --img-size 64 --width 0.125 "
                f"| prunekit finetune --data {train} --steps 2 --batch-size 4 --adv fgsm "
                f"--bn-batches 1 {cpu} "
                f"| prunekit score --method taylor --data {train} --batches 1 --batch-size 4 "
                f"{cpu} "
                f"| prunekit mask --structured --ratio 0.5 --compact > first.st")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", original], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr
    shown = subprocess.run([str(BIN / "prunekit"), "history", "first.st", "--command"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    steps = shown.stdout.strip().split("\n  | ")
    assert [s.split()[1] for s in steps] == ["init", "finetune", "score", "mask"]
    assert steps[-1].startswith("prunekit mask --ratio 0.5 --granularity filter --compact")
    again = subprocess.run(["bash", "-o", "pipefail", "-c", shown.stdout.strip() +
                            " > again.st"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=1200)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.st").read_bytes() == (tmp_path / "first.st").read_bytes()


def test_history_prints_the_entries_as_json_lines(runner, tmp_path):
    import json

    path = tmp_path / "m.st"
    checkpoint.save(tiny_checkpoint(), path)
    result = runner.invoke(app, ["history", str(path)])
    assert result.exit_code == 0, result.stderr
    (entry,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert entry["command"] == "init" and entry["args"]["options"] == {"width": 0.125}
    shown = runner.invoke(app, ["history", str(path), "--command"])
    assert shown.stdout.strip() == ("prunekit init yolov3-small --classes 3 --img-size 64 "
                                    "--width 0.125 --seed 0")


def test_mask_compact_is_one_command():
    from prunekit.mask import PruneConfig, mask
    from prunekit.score import score

    ck = mask(score(tiny_checkpoint(), "l1-filter"), PruneConfig(0.25, granularity="filter",
                                                                 compact=True))
    assert [h["command"] for h in ck.history] == ["init", "score", "mask", "compact"]
    assert pipeline(ck.history).splitlines()[-1] == \
        "  | prunekit mask --ratio 0.25 --granularity filter --compact"


def test_a_score_step_is_rebuilt_with_the_settings_its_method_reads():
    """A library caller's ScoreConfig may carry settings its method ignores; `score` refuses
    them on the command line, so the rebuilt command leaves them out."""
    from prunekit.score import ScoreConfig, score

    ck = score(tiny_checkpoint(), ScoreConfig(method="magnitude", batches=3, lr=0.5,
                                              baseline="white", workers=0))
    assert commands(ck.history)[-1] == ["prunekit", "score", "--method", "magnitude"]


def test_a_finetune_step_is_rebuilt_without_settings_that_had_no_effect():
    """adv_mix without an attack, eval_every without validation data and epochs beside steps
    did nothing, and `finetune` refuses them, so the rebuilt command leaves them out."""
    from dataclasses import asdict

    from prunekit.finetune import TrainConfig

    train = TrainConfig(data="train.json", steps=3, epochs=2.0, adv_mix=0.3, eval_every=5)
    entry = {"command": "finetune", "args": {"train": asdict(train), "attack": None}}
    assert commands([entry]) == [["prunekit", "finetune", "--data", "train.json", "--steps",
                                  "3"]]
    entry["args"]["train"]["val"] = "val.json"
    assert commands([entry])[0][-4:] == ["--val", "val.json", "--eval-every", "5"]


def test_an_fgsm_step_is_rebuilt_without_pgds_settings():
    """FGSM reads neither PGD's step size nor its steps, and the commands refuse them."""
    from dataclasses import asdict

    from prunekit.attack import AttackConfig
    from prunekit.finetune import TrainConfig

    attack = asdict(AttackConfig(method="fgsm", eps=0.03, alpha=0.01, steps=7))
    entry = {"command": "finetune", "args": {"train": asdict(TrainConfig(data="t.json")),
                                             "attack": attack}}
    assert commands([entry])[0][-4:] == ["--adv", "fgsm", "--eps", "0.03"]
    entry["args"]["attack"]["method"] = "pgd"
    assert commands([entry])[0][-8:] == ["--adv", "pgd", "--eps", "0.03", "--alpha", "0.01",
                                         "--attack-steps", "7"]


def test_a_history_without_settings_whole_is_refused_in_one_line():
    from tests.test_legacy import LEGACY

    legacy = checkpoint.load(LEGACY / "legacy.st")
    with pytest.raises(PrunekitError, match=r"step 1 of the history \(init\) was recorded by "
                                            r"prunekit 0\.1\.0 without its settings whole"):
        commands(legacy.history)
