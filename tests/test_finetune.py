"""finetune: training reduces the loss, masks hold, runs replay and resume exactly."""

from __future__ import annotations

import pytest
import torch

from prunekit import checkpoint
from prunekit.cli import app
from prunekit.errors import PrunekitError
from prunekit.finetune import TrainConfig, finetune, lr_at
from tests.conftest import tiny_checkpoint


def _ck(synth_data):
    from prunekit.init import init

    return init("yolov3-small", dataset=synth_data / "train.json", img_size=64,
                options={"width": 0.125})


def _train(synth_data, **settings):
    return TrainConfig(str(synth_data / "train.json"), **settings)


def _masked(ck, keep=0.25):
    g = torch.Generator().manual_seed(1)
    for name, t in list(ck.state.items()):
        if name.endswith("conv.weight"):
            mask = torch.zeros(t.numel(), dtype=torch.bool)
            mask[torch.randperm(t.numel(), generator=g)[: max(1, int(keep * t.numel()))]] = True
            ck.masks[name] = mask.view(t.shape)
            ck.state[name] = t.masked_fill(~ck.masks[name], 0.0)
    return ck


def test_lr_schedule_warms_up_and_decays():
    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(0.02, abs=1e-3)


def test_masked_training_keeps_pruned_weights_at_zero(synth_data):
    ck = _masked(_ck(synth_data))
    before = {k: v.clone() for k, v in ck.masks.items()}
    out = finetune(ck, _train(synth_data, steps=50, batch_size=4, lr=1e-2, workers=0),
                   device="cpu")
    assert out.masks.keys() == before.keys()
    for name, mask in before.items():
        assert torch.equal(out.masks[name], mask)
        assert (out.state[name][~mask] == 0).all(), name
        assert (out.state[name][mask] != ck.state[name][mask]).any(), name  # it did train
    reloaded = checkpoint.from_bytes(checkpoint.to_bytes(out))
    for name, mask in before.items():
        assert torch.equal(reloaded.masks[name], mask)


def test_training_lowers_the_loss(synth_data):
    losses = []
    finetune(_ck(synth_data), _train(synth_data, steps=30, batch_size=8, lr=5e-3, workers=0,
                                     augment=False),
             device="cpu", progress=lambda s, t, p: losses.append(p["loss"]))
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


def _weights(ck):
    return {k: v for k, v in ck.state.items()}


def _equal(a, b):
    return all(torch.equal(a.state[k], b.state[k]) for k in a.state)


@pytest.mark.parametrize("how", ["sigint", "kill"])
def test_resume_gives_the_same_weights(synth_data, tmp_path, how):
    ck = _ck(synth_data)
    config = _train(synth_data, steps=12, batch_size=4, workers=1, seed=3, save_every=5)
    full = finetune(ck, config, device="cpu")
    state = tmp_path / "out.st.state"

    def stop(step, total, parts):
        if step == 8:
            raise KeyboardInterrupt if how == "sigint" else SystemExit(137)

    with pytest.raises(PrunekitError if how == "sigint" else SystemExit):
        finetune(ck, config, device="cpu", state_file=state, progress=stop)
    assert state.exists()
    resumed = finetune(ck, config, device="cpu", state_file=state, resume=True)
    assert _equal(full, resumed)
    assert resumed.history[-1]["args"]["resumed_from"] == (8 if how == "sigint" else 5)
    assert not state.exists()


def test_resume_with_other_arguments_is_refused(synth_data, tmp_path):
    ck = _ck(synth_data)
    state = tmp_path / "s.state"

    def stop(step, total, parts):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(PrunekitError):
        finetune(ck, _train(synth_data, steps=6, batch_size=4, workers=0), device="cpu",
                 state_file=state, progress=stop)
    with pytest.raises(PrunekitError, match="lr"):
        finetune(ck, _train(synth_data, steps=6, batch_size=4, workers=0, lr=0.1),
                 device="cpu", state_file=state, resume=True)


def test_cli_finetune_records_history_and_grey(synth_data, tmp_path, runner):
    src = tmp_path / "m.st"
    checkpoint.save(_ck(synth_data), src)
    out = tmp_path / "grey.st"
    result = runner.invoke(app, ["finetune", str(src), "--data", str(synth_data / "train.json"),
                                 "--steps", "3", "--batch-size", "4", "--grey", "--workers", "0",
                                 "--device", "cpu", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    ck = checkpoint.load(out)
    assert ck.input["colour"] == "grey"
    entry = ck.history[-1]
    assert entry["command"] == "finetune" and entry["args"]["train"]["steps"] == 3
    assert entry["args"]["train"]["batch_size"] == 4 and entry["args"]["train"]["lr"] == 2e-3
    assert entry["args"]["train"]["grey"] is True and entry["args"]["attack"] is None


def test_bad_arguments_are_one_line_errors(synth_data, tmp_path, runner):
    src = tmp_path / "m.st"
    checkpoint.save(tiny_checkpoint(), src)
    result = runner.invoke(app, ["finetune", str(src), "--data", str(synth_data / "train.json"),
                                 "--steps", "1", "-o", str(tmp_path / "o.st")])
    assert result.exit_code == 1
    assert "not among the model's classes" in result.stderr
    assert not (tmp_path / "o.st").exists()


def test_real_sigint_then_resume(synth_data, tmp_path):
    """A real SIGINT to `prunekit finetune`, then --resume: the same weights as one run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "m.st"
    checkpoint.save(_ck(synth_data), src)
    args = [sys.executable, "-m", "prunekit", "finetune", str(src), "--data",
            str(synth_data / "train.json"), "--steps", "100", "--batch-size", "4", "--workers",
            "0", "--device", "cpu", "--seed", "5", "--save-every", "3", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    full = subprocess.run([*args, "-o", str(tmp_path / "full.st")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    out = tmp_path / "cut.st"
    proc = subprocess.Popen([*args, "-o", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    state = tmp_path / "cut.st.state"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # The signal lands mid-step at a random point; the step finishes, its state is saved.
    assert proc.returncode == 1 and "--resume" in err and "Traceback" not in err, err[-2000:]
    assert not out.exists() and state.exists()
    resumed = subprocess.run([*args, "-o", str(out), "--resume"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _equal(checkpoint.load(tmp_path / "full.st"), checkpoint.load(out))


@pytest.mark.slow
def test_a_yolov3_416_training_step_runs_on_cpu():
    from prunekit.finetune import train_step
    from prunekit.init import init

    model = init("yolov3", classes=80, img_size=416).build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    from prunekit.models.base import Geometry, Target

    targets = [Target(torch.tensor([[50.0, 60, 200, 220]]), torch.tensor([3]),
                      Geometry(416, 416)),
               Target(torch.tensor([[10.0, 10, 40, 90]]), torch.tensor([17]), Geometry(416, 416))]
    before = model.layers[0].conv.weight.detach().clone()
    parts = train_step(model, torch.rand(2, 3, 416, 416), targets, opt)
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())
    assert not torch.equal(before, model.layers[0].conv.weight)


def test_bn_recalibration_measures_the_batches_and_keeps_the_weights():
    from prunekit.finetune import recalibrate_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    model[1].running_mean.fill_(5.0)
    weight = model[0].weight.clone()
    batches = [(torch.rand(2, 3, 8, 8), None, None) for _ in range(3)]
    recalibrate_bn(model, iter(batches), 2)
    with torch.no_grad():
        z = torch.cat([model[0](b[0]) for b in batches[:2]])
    torch.testing.assert_close(model[1].running_mean, z.mean((0, 2, 3)))
    assert torch.equal(model[0].weight, weight) and not model.training


@pytest.mark.parametrize("where", ["payload", "header"])
def test_a_training_state_with_one_flipped_bit_is_refused_on_resume(synth_data, tmp_path,
                                                                     runner, where):
    """The state file is prunekit's container, digest included, as a checkpoint is."""
    import struct

    ck = _ck(synth_data)
    src, out = tmp_path / "m.st", tmp_path / "out.st"
    checkpoint.save(ck, src)
    state = out.with_name("out.st.state")

    def stop(step, total, parts):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(PrunekitError, match="interrupted at step 2"):
        finetune(ck, _train(synth_data, steps=6, batch_size=4, workers=0), device="cpu",
                 state_file=state, progress=stop)
    data = bytearray(state.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    at = len(data) - 1000 if where == "payload" else 8 + data[8:8 + n].index(b'"step":"2"') + 8
    data[at] ^= 0x01
    state.write_bytes(bytes(data))
    result = runner.invoke(app, ["finetune", str(src), "--data", str(synth_data / "train.json"),
                                 "--steps", "6", "--batch-size", "4", "--workers", "0",
                                 "--device", "cpu", "--resume", "-o", str(out)])
    assert result.exit_code == 1, result.stderr
    assert result.stderr.count("\n") == 1
    assert f"--resume: the training state {state} is damaged: its bytes no longer match the " \
           f"checksum written with them" in result.stderr
    assert "delete it and run without --resume to start again" in result.stderr
    assert not out.exists() and state.exists()


# ------------------------------------------------------------------ gradual pruning (--prune-to)


def _gradual(granularity="weight", kind="cubic", compact=False):
    from prunekit.mask import PruneConfig

    return PruneConfig(0.6, granularity, compact=compact, schedule=kind, start=1, end=7,
                       every=3)


def _scored(ck, method):
    """``ck`` as if `score --method method` had scored it (the pruner re-ranks by the method)."""
    return ck.add_history("score", {"score": {"method": method}})


@pytest.mark.parametrize(("granularity", "method"), [("weight", "magnitude"),
                                                     ("kernel", "taylor"),
                                                     ("filter", "l1-filter")])
def test_gradual_pruning_follows_the_schedule_and_holds_its_zeros(synth_data, monkeypatch,
                                                                  granularity, method):
    """At every update the sparsity is the formula's (per layer, rounded as `mask` rounds);
    masks only shrink; pruned weights are exactly 0 after every optimiser step."""
    from prunekit.finetune import loop
    from prunekit.mask import Units, removed_count, unit_scores
    from prunekit.schedule import Schedule

    ck = _scored(_ck(synth_data), method)
    prune = _gradual(granularity)
    schedule = Schedule.of(prune)
    units = Units(ck.skeleton(), granularity)
    seen: list[dict] = []
    real = loop.train_step

    def step_and_check(model, *args, masks=None, **kw):
        step = len(seen)
        parts = real(model, *args, masks=masks, **kw)
        state = model.state_dict()
        for n, m in masks.items():
            assert (state[n][~m.to(state[n].device)] == 0).all(), (step, n)
        if seen:
            for n, m in seen[-1].items():  # a weight once pruned stays pruned
                assert not (masks[n] & ~m).any(), (step, n)
        seen.append({n: m.clone() for n, m in masks.items()})
        per = {n: unit_scores(masks[n].float(), granularity) for n in units.names
               if n in masks}
        removed = [int((u == 0).sum()) if per else 0 for u in units.scores(per)] \
            if per else [0] * len(units.sets)
        sizes = [u.numel() for u in units.scores(
            {n: unit_scores(ck.state[n].float(), granularity) for n in units.names})]
        ratio = schedule.sparsity(step)
        assert removed == [removed_count(ratio, n) for n in sizes], (step, ratio)
        return parts

    monkeypatch.setattr(loop, "train_step", step_and_check)
    out = finetune(ck, _train(synth_data, steps=10, batch_size=4, workers=0, bn_batches=1),
                   device="cpu", prune=prune)
    assert len(seen) == 10 and schedule.updates() == [1, 4, 7]
    assert [round(schedule.sparsity(t), 6) for t in (0, 1, 4, 7)] == \
        [0.0, 0.0, round(0.6 - 0.6 * (1 / 2) ** 3, 6), 0.6]
    assert all(torch.equal(out.masks[n], seen[-1][n].cpu()) for n in seen[-1])
    assert all((out.state[n][~m] == 0).all() for n, m in out.masks.items())
    recorded = out.history[-1]["args"]["prune"]
    assert recorded["schedule"] == "cubic" and recorded["ratio"] == 0.6


def test_gradual_filter_pruning_compacts_at_the_end(synth_data):
    ck = _scored(_ck(synth_data), "l1-filter")
    out = finetune(ck, _train(synth_data, steps=8, batch_size=4, workers=0, bn_batches=1),
                   device="cpu", prune=_gradual("filter", "one-shot", compact=True))
    assert [h["command"] for h in out.history[-2:]] == ["finetune", "compact"]
    assert sum(v.numel() for v in out.state.values()) < \
        0.7 * sum(v.numel() for v in ck.state.values())


def test_static_scores_rank_the_gradual_masks(synth_data):
    """Methods whose scores cannot be recomputed (HYDRA's) rank by the checkpoint's scores: the
    lowest-scored half of every layer goes, whatever the weights do meanwhile."""
    ck = _scored(_ck(synth_data), "hydra")
    g = torch.Generator().manual_seed(5)
    ck.scores = {n: torch.rand(ck.state[n].shape, generator=g)
                 for n in ck.skeleton().prunable()}
    out = finetune(ck, _train(synth_data, steps=8, batch_size=4, workers=0, bn_batches=1),
                   device="cpu", prune=_gradual("weight", "one-shot"))
    for n, s in ck.scores.items():
        k = round(0.6 * s.numel())
        if 0 < k < s.numel():
            lowest = torch.zeros(s.numel(), dtype=torch.bool)
            lowest[s.flatten().argsort()[:k]] = True
            assert torch.equal(out.masks[n].flatten(), ~lowest), n


@pytest.mark.parametrize("how", ["sigint", "kill"])
def test_resume_mid_schedule_gives_the_uninterrupted_tensors(synth_data, tmp_path, how):
    """Taylor scores accumulate between updates (steps 4-6 here): a run stopped at step 5 or
    6 resumes with the masks in force and the accumulators, and ends where one run ends."""
    ck = _scored(_ck(synth_data), "taylor")
    config = _train(synth_data, steps=10, batch_size=4, workers=0, seed=3, save_every=5,
                    bn_batches=1)
    prune = _gradual("weight")
    full = finetune(ck, config, device="cpu", prune=prune)
    state = tmp_path / "out.st.state"

    def stop(step, total, parts):
        if step == 6:
            raise KeyboardInterrupt if how == "sigint" else SystemExit(137)

    with pytest.raises(PrunekitError if how == "sigint" else SystemExit):
        finetune(ck, config, device="cpu", state_file=state, progress=stop, prune=prune)
    with pytest.raises(PrunekitError, match="the pruning"):
        finetune(ck, config, device="cpu", state_file=state, resume=True,
                 prune=_gradual("weight", "linear"))
    resumed = finetune(ck, config, device="cpu", state_file=state, resume=True, prune=prune)
    assert resumed.history[-1]["args"]["resumed_from"] == (6 if how == "sigint" else 5)
    assert _equal(full, resumed) and full.masks.keys() == resumed.masks.keys()
    assert all(torch.equal(full.masks[k], resumed.masks[k]) for k in full.masks)


def test_cli_gradual_pruning_and_its_bad_inputs(synth_data, tmp_path, runner):
    src = tmp_path / "in.st"
    checkpoint.save(_ck(synth_data), src)
    base = ["finetune", str(src), "--data", str(synth_data / "train.json"), "--steps", "6",
            "--batch-size", "4", "--workers", "0", "--bn-batches", "1", "--device", "cpu"]
    out = tmp_path / "out.st"
    done = runner.invoke(app, [*base, "--prune-to", "0.5", "--prune-end", "4", "--prune-every",
                               "2", "-o", str(out)])
    assert done.exit_code == 0, done.stderr
    pruned = checkpoint.load(out)
    assert pruned.history[-1]["args"]["prune"]["end"] == 4
    for extra, message in (
            (["--prune-to", "1.5", "--prune-end", "4"], "--prune-to must lie in (0, 1)"),
            (["--prune-to", "0", "--prune-end", "4"], "--prune-to must lie in (0, 1)"),
            (["--prune-to", "0.5", "--prune-start", "4", "--prune-end", "2"],
             "--prune-end (2) comes before --prune-start (4)"),
            (["--prune-to", "0.5", "--prune-end", "6"], "--prune-end (6) is not before the"),
            (["--prune-to", "0.5"], "--schedule cubic needs --prune-end"),
            (["--prune-to", "0.5", "--prune-end", "3", "--granularity", "row"],
             "--granularity 'row' is unknown"),
            (["--compact"], "--compact has no effect without --prune-to RATIO; leave it out"),
            (["--granularity", "filter", "--prune-every", "2"], "--prune-every, --granularity "
             "have no effect without --prune-to RATIO; leave them out")):
        bad = tmp_path / "bad.st"
        done = runner.invoke(app, [*base, *extra, "-o", str(bad)])
        assert done.exit_code == 1, (extra, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (extra, done.stderr)
        assert not bad.exists() and not (tmp_path / "bad.st.state").exists()
