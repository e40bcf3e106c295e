"""Attacks: bounded, really moving, loss-raising, side-effect free, and saved losslessly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit import checkpoint
from prunekit.attack import AttackConfig, attack_dataset, attacked_batches, objective, perturb
from prunekit.cli import app
from prunekit.data.coco import CocoDetection, collate, loader
from prunekit.errors import PrunekitError


@pytest.fixture(scope="module")
def trained(synth_data):
    """The tiny model after a few steps, so the loss has structure to attack."""
    from prunekit.finetune import TrainConfig, finetune
    from prunekit.init import init

    ck = init("yolov3-small", dataset=synth_data / "train.json", img_size=64,
              options={"width": 0.125})
    return finetune(ck, TrainConfig(str(synth_data / "train.json"), steps=20, batch_size=8,
                                    lr=5e-3, workers=0), device="cpu")


def test_saved_pngs_are_bounded_move_and_reload_exactly(trained, synth_data, tmp_path):
    eps = 0.05
    out = tmp_path / "adv"
    summary = attack_dataset(trained, synth_data / "val.json", out, AttackConfig(eps=eps),
                             device="cpu", seed=1)
    assert summary["images"] == 8
    adv_json = json.loads((out / "val.json").read_text())
    src_json = json.loads((synth_data / "val.json").read_text())
    assert [i["id"] for i in adv_json["images"]] == [i["id"] for i in src_json["images"]]
    assert adv_json["annotations"] == src_json["annotations"]
    bound = round(eps * 255)
    moved = 0
    for adv_im, src_im in zip(adv_json["images"], src_json["images"], strict=True):
        adv = np.asarray(Image.open(out / adv_im["file_name"])).astype(int)
        src = np.asarray(Image.open(synth_data / src_im["file_name"]).convert("RGB")).astype(int)
        assert adv.shape == src.shape
        assert np.abs(adv - src).max() <= bound
        moved += np.abs(adv - src).mean()
    assert moved / 8 > 0.3 * bound  # most pixels move by a good part of ε
    # The PNGs hold exactly the tensors the on-the-fly path evaluates.
    model = trained.build()
    ds = CocoDetection(synth_data / "val.json", model.transform, classes=model.classes,
                       originals=True)
    fly = torch.cat([b[0] for b in attacked_batches(model, loader(ds, 16), AttackConfig(eps=eps),
                                                    seed=1)])
    saved = CocoDetection(out / "val.json", model.transform, classes=model.classes)
    saved_images = collate([saved[i] for i in range(len(saved))])[0]
    assert torch.equal(fly, saved_images)


def test_attack_leaves_the_model_untouched(trained, synth_data):
    model = trained.build()
    model.train()  # even a model left in train mode must not learn from the attack
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = CocoDetection(synth_data / "val.json", model.transform, classes=model.classes,
                       originals=True)
    for _ in attacked_batches(model, loader(ds, 4), AttackConfig(steps=3)):
        pass
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_pgd_raises_the_loss_step_by_step(trained, synth_data):
    model = trained.build()
    ds = CocoDetection(synth_data / "val.json", model.transform, classes=model.classes)
    images, targets, _ = collate([ds[i] for i in range(len(ds))])
    goal = objective(model, targets, "total")
    values = []

    def recording(outputs):
        value = goal(outputs)
        values.append(float(value.detach()))
        return value

    adv = perturb(model, images, recording, AttackConfig(steps=5),
                  generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        values.append(float(goal(model(adv))))
    diffs = np.diff(values)
    assert diffs.mean() > 0 and values[-1] > values[0]
    with torch.no_grad():
        clean = float(goal(model(images)))
    assert values[-1] > clean


@pytest.mark.parametrize("loss", ["cls", "box", "obj"])
def test_partial_and_vanishing_objectives(trained, synth_data, loss):
    model = trained.build()
    ds = CocoDetection(synth_data / "val.json", model.transform, classes=model.classes)
    images, targets, _ = collate([ds[i] for i in range(4)])
    goal = objective(model, targets, loss)
    adv = perturb(model, images, goal, AttackConfig(loss=loss, steps=3),
                  generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(goal(model(adv))) > float(goal(model(images)))
        if loss == "obj":  # vanishing: objectness goes down everywhere on average
            def obj(out):
                return torch.cat([o.view(4, 3, -1, *o.shape[-2:])[:, :, 4].flatten()
                                  for o in out]).sigmoid().mean()

            assert obj(model(adv)) < obj(model(images))


def test_fgsm_is_one_step_of_size_eps(trained, synth_data):
    model = trained.build()
    ds = CocoDetection(synth_data / "val.json", model.transform, classes=model.classes)
    images, targets, _ = collate([ds[i] for i in range(2)])
    adv = perturb(model, images, objective(model, targets), AttackConfig(method="fgsm",
                                                                         random_start=False))
    change = (adv - images).abs()
    inside = (images > 0.05) & (images < 0.95)
    assert torch.allclose(change[inside], torch.full_like(change[inside], 0.05), atol=1e-6)


def test_bad_attack_settings_are_refused():
    with pytest.raises(PrunekitError, match="--eps"):
        AttackConfig(eps=0).check()
    with pytest.raises(PrunekitError, match="--loss"):
        AttackConfig(loss="nope").check()


def test_cli_attack_then_detect_equals_detect_attack(trained, synth_data, tmp_path, runner):
    model = tmp_path / "m.st"
    checkpoint.save(trained, model)
    val = synth_data / "val.json"
    adv = tmp_path / "adv"
    r = runner.invoke(app, ["attack", str(model), "--data", str(val), "--device", "cpu",
                            "--seed", "4", "-o", str(adv)])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 8
    a = runner.invoke(app, ["detect", str(model), "--data", str(adv / "val.json"), "--conf",
                            "0.001", "--device", "cpu"])
    b = runner.invoke(app, ["detect", str(model), "--data", str(val), "--conf", "0.001",
                            "--attack", "pgd", "--seed", "4", "--device", "cpu"])
    assert a.exit_code == 0 and b.exit_code == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout
    again = runner.invoke(app, ["attack", str(model), "--data", str(val), "-o", str(adv)])
    assert again.exit_code == 1 and "exists" in again.stderr


def test_attack_without_labels_uses_the_models_own_detections(trained, synth_data, tmp_path,
                                                              runner):
    model = tmp_path / "m.st"
    checkpoint.save(trained, model)
    clean = runner.invoke(app, ["detect", str(model), "--images", str(synth_data / "images"),
                                "--conf", "0.001", "--device", "cpu"])
    attacked = runner.invoke(app, ["detect", str(model), "--images",
                                   str(synth_data / "images"), "--conf", "0.001", "--attack",
                                   "pgd", "--device", "cpu"])
    assert clean.exit_code == 0 and attacked.exit_code == 0, attacked.stderr
    assert clean.stdout != attacked.stdout
