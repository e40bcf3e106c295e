"""Adversarial attacks on detectors: L∞ PGD and FGSM on the detection loss.

One implementation serves every caller: ``prunekit attack`` (adversarial PNGs), ``detect
--attack`` (attacked detections on the fly), adversarial training in ``finetune`` and HYDRA's
adversarial score optimisation.

* Images live in [0, 1]; the perturbation is optimised in *original-image* pixel space and goes
  through the model's (differentiable) input transform on every step, so the image saved is the
  image attacked. Training attacks work on the already transformed batch (the identity).
* PGD starts uniformly at random in the ε-ball, steps by ``alpha · sign(gradient)``, and after
  every step projects back onto the ball and clamps to [0, 1]. FGSM is one step of size ε from
  the clean image; ``finetune --adv fgsm`` uses FGSM with a uniform random start and a step of
  1.25 ε instead (Wong et al., "Fast is better than free", 2020), which avoids the catastrophic
  overfitting of plain FGSM training at the cost of one forward–backward pass.
* Objectives (``--loss``): ``total`` (the model's detection loss), its ``cls`` or ``box`` part,
  or ``obj`` — the "vanishing" attack, which drives every detection's confidence to zero and
  needs no targets (each family says what that means: :meth:`Detector.vanish`).
* Targets are the dataset's ground truth, or, for images without labels, the model's own clean
  detections at ``target_conf``.
* The model stays in eval mode, and only the input's gradient is asked for
  (:func:`torch.autograd.grad`), so BatchNorm statistics and weights are untouched and no weight
  gradients are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prunekit.device import resolve_device, set_threads
from prunekit.errors import PrunekitError
from prunekit.files import folder_atomically
from prunekit.models.base import Detector, Geometry, Target, quantise

LOSSES = ("total", "cls", "box", "obj")
METHODS = ("pgd", "fgsm")
#: The settings only PGD reads (FGSM takes one step of ε, or 1.25 ε from its random start).
PGD_ONLY = ("alpha", "steps")


@dataclass(frozen=True)
class AttackConfig:
    """An attack's settings (the paper's: PGD, ε 0.05, step 0.02, 5 steps), one value wherever
    an attack is used (``attack``, ``detect --attack``, adversarial ``finetune``, HYDRA, the
    grid's evaluation), recorded whole in the output's history.

    Attributes:
        method: ``pgd`` or ``fgsm`` (with ``random_start``, FGSM with a random start and a step
            of 1.25 ε: the training attack of "Fast is better than free").
        eps: L∞ radius (images in [0, 1]).
        alpha: PGD's step size.
        steps: PGD's steps (FGSM takes one).
        loss: the objective: ``total``, ``cls``, ``box`` or ``obj`` (vanishing).
        random_start: start uniformly at random in the ε-ball.
        target_conf: the confidence of the model's own detections used as targets for images
            without labels.
    """

    method: str = "pgd"
    eps: float = 0.05
    alpha: float = 0.02
    steps: int = 5
    loss: str = "total"
    random_start: bool = True
    target_conf: float = 0.25

    def check(self, steps_flag: str = "--steps", *, method_flag: str = "--method"
              ) -> AttackConfig:
        """Refuse settings no attack can run with (``steps_flag`` and ``method_flag``: the
        command's flags for ``steps`` and ``method``, named in the messages)."""
        if self.method not in METHODS:
            raise PrunekitError(f"{method_flag} {self.method!r} is unknown; use pgd or fgsm")
        if self.loss not in LOSSES:
            raise PrunekitError(f"--loss {self.loss!r} is unknown; use total, cls, box or obj")
        if not 0 < self.eps <= 1:
            raise PrunekitError(f"--eps must lie in (0, 1] (images are in [0, 1]), got "
                                f"{self.eps}")
        if self.method == "pgd" and not 0 < self.alpha <= 1:
            raise PrunekitError(f"--alpha must lie in (0, 1], got {self.alpha}")
        if self.method == "pgd" and self.steps < 1:
            raise PrunekitError(f"{steps_flag} must be at least 1, got {self.steps}")
        return self


Objective = Callable[[tuple[Tensor, ...]], Tensor]


def objective(model: Detector, targets: list[Target] | None, loss: str = "total") -> Objective:
    """The quantity an attack maximises, as a function of the model's raw outputs."""
    if loss != "obj" and targets is None:
        raise PrunekitError(f"the {loss!r} attack needs targets (labels or the model's own "
                            f"detections)")
    return lambda outputs: model.objective(outputs, targets, loss)


def perturb(model: Detector, x: Tensor, goal: Objective, config: AttackConfig, *,
            transform: Callable[[Tensor], Tensor] | None = None,
            geometries: list[Geometry] | None = None,
            generator: torch.Generator | None = None) -> Tensor:
    """Adversarial version of ``x`` (floats in [0, 1]) within the L∞ ball of radius ε.

    Args:
        model: the detector; kept in eval mode while attacking.
        x: the clean images (any size when ``transform`` maps them to the model's input).
        goal: the objective to maximise, given the model's raw outputs.
        config: method, ε, step, steps, random start.
        transform: differentiable map from ``x``'s space to the model's input.
        geometries: each image's geometry in the model input (see ``Detector.forward``).
        generator: random source for the random start.
    """
    was_training = model.training
    model.eval()
    transform = transform or (lambda t: t)
    x = x.detach()
    lo, hi = (x - config.eps).clamp(min=0), (x + config.eps).clamp(max=1)
    if config.method == "fgsm":
        steps, step = 1, config.eps
        start = x.clone()
        if config.random_start:
            step = 1.25 * config.eps
            start = _uniform_start(x, config.eps, generator)
    else:
        steps, step = config.steps, config.alpha
        start = _uniform_start(x, config.eps, generator) if config.random_start else x.clone()
    adv = torch.max(torch.min(start, hi), lo)
    try:
        for _ in range(steps):
            adv.requires_grad_(True)
            value = goal(model(transform(adv), geometries))
            (grad,) = torch.autograd.grad(value, adv)
            with torch.no_grad():
                adv = adv.detach() + step * grad.sign()
                adv = torch.max(torch.min(adv, hi), lo)
    finally:
        model.train(was_training)
    return adv.detach()


def _uniform_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    noise = torch.rand(x.shape, generator=generator, device="cpu" if generator else x.device)
    return x + (noise.to(x.device) * 2 - 1) * eps


def self_targets(model: Detector, images: Tensor, geometries: list[Geometry],
                 conf: float) -> list[Target]:
    """The model's own clean detections as loss targets (for images without labels)."""
    with torch.no_grad():
        found = model.postprocess(model(images, geometries), geometries, conf=conf, iou=0.45,
                                  max_det=100)
    return [Target(d.boxes, d.labels, g) for d, g in zip(found, geometries, strict=True)]


# ------------------------------------------------------------------- in original pixel space


def attack_originals(model: Detector, originals: list[Tensor], targets: list[Target] | None,
                     config: AttackConfig, *, generator: torch.Generator | None = None) \
        -> list[Tensor]:
    """Attack images in their original pixel space.

    Args:
        model: the detector.
        originals: 3×H×W float images in [0, 1] (sizes may differ; equal sizes are batched).
        targets: each image's targets, or None to attack the model's own clean detections.
        config: the attack.
        generator: random source for the random start.

    Returns:
        The adversarial images, same sizes as ``originals``.
    """
    device = next(model.parameters()).device
    transform = model.transform
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(originals):
        groups.setdefault(tuple(im.shape[-2:]), []).append(i)
    result: list[Tensor | None] = [None] * len(originals)
    for (h, w), idx in groups.items():
        x = torch.stack([originals[i] for i in idx]).to(device)
        geometries = [transform.geometry(w, h)] * len(idx)
        goal_targets = None
        if config.loss != "obj":
            if targets is not None:
                goal_targets = [targets[i] for i in idx]
            else:
                goal_targets = self_targets(model.eval(), transform(x), geometries,
                                            config.target_conf)
        goal = objective(model, goal_targets, config.loss)
        adv = perturb(model, x, goal, config, transform=transform, geometries=geometries,
                      generator=generator)
        for k, i in enumerate(idx):
            result[i] = adv[k]
    return result  # type: ignore[return-value]


def attacked_batches(model: Detector, batches, config: AttackConfig, *, seed: int = 0,
                     has_labels: bool = True) -> Iterator[tuple[Tensor, list[Target], list[dict]]]:
    """Batches from a loader whose records carry ``original`` images, with the images replaced
    by their attacked versions in the model's input form (quantised to 8 bits first, as a PNG
    holds them). Each record gains ``adversarial`` (uint8, original size)."""
    config.check()
    g = torch.Generator().manual_seed(seed)
    for _, targets, records in batches:
        originals = [r["original"].float().div(255) for r in records]
        adv = attack_originals(model, originals, targets if has_labels else None, config,
                               generator=g)
        images = []
        for rec, a in zip(records, adv, strict=True):
            rec["adversarial"] = quantise(a)
            images.append(model.transform.image(rec["adversarial"]))
        yield torch.stack(images).float().div(255), targets, records


def training_attack(config: AttackConfig) -> Callable[[Detector, Tensor, list[Target]], Tensor]:
    """``adv(model, images, targets)`` for adversarial training (and HYDRA) on transformed
    batches."""
    config.check()

    def adv(model: Detector, images: Tensor, targets: list[Target]) -> Tensor:
        return perturb(model, images, objective(model, targets, config.loss), config,
                       geometries=[t.geometry for t in targets])

    return adv


def describe(config: AttackConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)


def attack_dataset(ck, data: str | Path, out: str | Path, config: AttackConfig, *,
                   images: str | Path | None = None, batch_size: int = 16,
                   device: str = "auto", threads: int | None = None, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the adversarial version of every image of a COCO dataset, as PNG, with a COCO JSON
    beside them (same image ids and annotations), so ``detect`` and ``evaluate`` run on it
    unchanged. The folder appears complete or not at all.

    Args:
        ck: the checkpoint to attack.
        data: the dataset's COCO JSON (its annotations are the attack's targets).
        out: output folder (must not exist or be empty); gets the images under their original
            relative paths (as ``.png``) and the JSON named like ``data``.
        config: the attack.
        images: image root (default: the JSON's folder).
        batch_size: images attacked together.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads (default: unchanged).
        seed: seed for the random start.
        progress: ``progress(done, total)`` callback.

    Returns:
        A summary: images written, mean and max L∞ change in 8-bit levels.
    """
    import json
    import os

    from PIL import Image

    from prunekit.data.coco import CocoDetection, loader, read_json

    config.check()
    set_threads(threads)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrunekitError(f"{out} exists; remove it or choose another folder")
    dev = resolve_device(device)
    model = ck.build().to(dev)
    dataset = CocoDetection(data, model.transform, images=images, classes=model.classes,
                            originals=True)
    coco = read_json(data)
    names: dict[Any, str] = {}
    done, worst, total_change = 0, 0, 0.0
    with folder_atomically(out) as tmp:
        for _, _, records in attacked_batches(model, loader(dataset, batch_size), config,
                                              seed=seed):
            for rec in records:
                # Same relative path as the original (inside the image root, checked on
                # loading), as PNG: JPEG would destroy the perturbation.
                rel = Path(os.path.normpath(rec["file_name"])).with_suffix(".png")
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                adv = rec["adversarial"]
                Image.fromarray(adv.permute(1, 2, 0).numpy()).save(tmp / rel, format="PNG")
                change = (adv.int() - rec["original"].int()).abs().amax().item()
                worst = max(worst, change)
                total_change += change
                names[rec["image_id"]] = rel.as_posix()
                done += 1
                if progress is not None:
                    progress(done, len(dataset))
        for im in coco["images"]:
            im["file_name"] = names[im["id"]]
        coco.setdefault("info", {})
        if isinstance(coco["info"], dict):
            coco["info"]["prunekit_attack"] = {**describe(config), "seed": seed,
                                               "source": str(data), "model": ck.name}
        (tmp / Path(data).name).write_text(json.dumps(coco))
    return {"images": done, "json": str(out / Path(data).name), "max_change": worst,
            "mean_max_change": total_change / max(done, 1), "eps_levels": config.eps * 255}
