"""Adversarial attacks on detectors: L∞ PGD and FGSM on the detection loss.

One implementation serves every caller: ``prunekit attack`` (adversarial PNGs), ``detect
--attack`` (attacked detections on the fly), adversarial training in ``finetune`` and HYDRA's
adversarial score optimisation.

* Images live in [0, 1]; the perturbation is optimised in *original-image* pixel space and goes
  through the (differentiable) letterbox on every step, so the image saved is the image attacked.
  Training attacks work on the already letterboxed batch (the identity transform).
* PGD starts uniformly at random in the ε-ball, steps by ``alpha · sign(gradient)``, and after
  every step projects back onto the ball and clamps to [0, 1]. FGSM is one step of size ε from
  the clean image; ``finetune --adv fgsm`` uses FGSM with a uniform random start and a step of
  1.25 ε instead (Wong et al., "Fast is better than free", 2020), which avoids the catastrophic
  overfitting of plain FGSM training at the cost of one forward–backward pass.
* Objectives (``--loss``): ``total`` (the detection loss of :mod:`prunekit.loss`), ``cls``,
  ``box``, or ``obj`` — the "vanishing" attack, which maximises −softplus(objectness logit),
  i.e. drives every objectness to zero and needs no targets.
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
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.errors import PrunekitError
from prunekit.loss import yolo_loss

LOSSES = ("total", "cls", "box", "obj")
METHODS = ("pgd", "fgsm")


@dataclass(frozen=True)
class AttackConfig:
    """An attack's settings (the paper's: PGD, ε 0.05, step 0.02, 5 steps)."""

    method: str = "pgd"
    eps: float = 0.05
    alpha: float = 0.02
    steps: int = 5
    loss: str = "total"
    random_start: bool = True
    target_conf: float = 0.25

    def check(self) -> AttackConfig:
        if self.method not in METHODS:
            raise PrunekitError(f"--method {self.method!r} is unknown; use pgd or fgsm")
        if self.loss not in LOSSES:
            raise PrunekitError(f"--loss {self.loss!r} is unknown; use total, cls, box or obj")
        if not 0 < self.eps <= 1:
            raise PrunekitError(f"--eps must lie in (0, 1] (images are in [0, 1]), got "
                                f"{self.eps}")
        if self.method == "pgd" and not 0 < self.alpha <= 1:
            raise PrunekitError(f"--alpha must lie in (0, 1], got {self.alpha}")
        if self.method == "pgd" and self.steps < 1:
            raise PrunekitError(f"--steps must be at least 1, got {self.steps}")
        return self


Objective = Callable[[tuple[Tensor, ...]], Tensor]


def objective(model: nn.Module, targets: Tensor | None, loss: str = "total") -> Objective:
    """The quantity an attack maximises, as a function of the model's raw outputs."""
    if loss == "obj":
        def vanish(outputs: tuple[Tensor, ...]) -> Tensor:
            c = 5 + model.num_classes
            total = 0.0
            for out in outputs:
                n, _, h, w = out.shape
                logits = out.view(n, -1, c, h, w)[:, :, 4]
                total = total - F.softplus(logits.float()).mean()
            return total

        return vanish
    if targets is None:
        raise PrunekitError(f"the {loss!r} attack needs targets (labels or the model's own "
                            f"detections)")
    anchors = [h.anchors for h in model.heads()]

    def detection_loss(outputs: tuple[Tensor, ...]) -> Tensor:
        total, parts = yolo_loss(outputs, targets, anchors, model.img_size, model.num_classes)
        return total if loss == "total" else parts[loss]

    return detection_loss


def perturb(model: nn.Module, x: Tensor, goal: Objective, config: AttackConfig, *,
            transform: Callable[[Tensor], Tensor] | None = None,
            generator: torch.Generator | None = None) -> Tensor:
    """Adversarial version of ``x`` (floats in [0, 1]) within the L∞ ball of radius ε.

    Args:
        model: the detector; kept in eval mode while attacking.
        x: the clean images (any size when ``transform`` maps them to the model's input).
        goal: the objective to maximise, given the model's raw outputs.
        config: method, ε, step, steps, random start.
        transform: differentiable map from ``x``'s space to the model's input (the letterbox).
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
            value = goal(model(transform(adv)))
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


def self_targets(model: nn.Module, images: Tensor, conf: float) -> Tensor:
    """The model's own clean detections as loss targets (for images without labels)."""
    from prunekit.detect import postprocess

    with torch.no_grad():
        per_image = postprocess(model.decode(model(images)), conf=conf)
    rows = [torch.cat((torch.full((len(box), 1), float(i)), lab.float().unsqueeze(1).cpu(),
                       box.cpu()), 1) for i, (box, _, lab) in enumerate(per_image)]
    return torch.cat(rows) if rows else torch.zeros(0, 6)


# ------------------------------------------------------------------- in original pixel space


def letterbox_float(x: Tensor, size: int) -> Tensor:
    """Differentiable letterbox of N×3×H×W floats: pad to a centred square with 114/255, then
    resize (bilinear, antialiased) to ``size``. Same geometry as
    :func:`prunekit.data.coco.letterbox`."""
    from prunekit.data.coco import PAD_VALUE

    h, w = x.shape[-2:]
    side = max(h, w)
    left, top = (side - w) // 2, (side - h) // 2
    if side != w or side != h:
        x = F.pad(x, (left, side - w - left, top, side - h - top), value=PAD_VALUE / 255)
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x


def attack_originals(model: nn.Module, originals: list[Tensor], targets: Tensor | None,
                     config: AttackConfig, *, generator: torch.Generator | None = None,
                     has_labels: bool = True) -> list[Tensor]:
    """Attack images in their original pixel space.

    Args:
        model: the detector.
        originals: 3×H×W float images in [0, 1] (sizes may differ; equal sizes are batched).
        targets: M×6 targets in the model's input pixels, batch indices into ``originals``.
        config: the attack.
        generator: random source for the random start.
        has_labels: False to attack the model's own clean detections instead of ``targets``.

    Returns:
        The adversarial images, same sizes as ``originals``.
    """
    device = next(model.parameters()).device
    size = model.img_size
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(originals):
        groups.setdefault(tuple(im.shape[-2:]), []).append(i)
    result: list[Tensor | None] = [None] * len(originals)
    for idx in groups.values():
        x = torch.stack([originals[i] for i in idx]).to(device)
        goal_targets = None
        if config.loss != "obj":
            if has_labels and targets is not None:
                rows = [targets[targets[:, 0] == i] for i in idx]
                goal_targets = torch.cat([torch.cat((torch.full((len(r), 1), float(k)),
                                                     r[:, 1:]), 1)
                                          for k, r in enumerate(rows)]).to(device)
            else:
                goal_targets = self_targets(model.eval(), letterbox_float(x, size),
                                            config.target_conf).to(device)
        goal = objective(model, goal_targets, config.loss)
        adv = perturb(model, x, goal, config, transform=lambda t: letterbox_float(t, size),
                      generator=generator)
        for k, i in enumerate(idx):
            result[i] = adv[k]
    return result  # type: ignore[return-value]


def quantise(image: Tensor) -> Tensor:
    """Float image in [0, 1] → uint8, as a PNG stores it."""
    return (image.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8)


def attacked_batches(model: nn.Module, batches, config: AttackConfig, *, seed: int = 0,
                     has_labels: bool = True) -> Iterator[tuple[Tensor, Tensor, list[dict]]]:
    """Batches from a loader whose records carry ``original`` images, with the images replaced
    by their attacked, letterboxed versions. Each record gains ``adversarial`` (uint8,
    original size)."""
    config.check()
    g = torch.Generator().manual_seed(seed)
    for _, targets, records in batches:
        originals = [r["original"].float().div(255) for r in records]
        adv = attack_originals(model, originals, targets, config, generator=g,
                               has_labels=has_labels)
        images = []
        for rec, a in zip(records, adv, strict=True):
            q = quantise(a)
            rec["adversarial"] = q
            images.append(letterbox_float(q.float().unsqueeze(0).div(255), model.img_size))
        yield torch.cat(images), targets, records


def training_attack(kind: str, *, eps: float, alpha: float, steps: int,
                    loss: str = "total") -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """``adv(model, images, targets)`` for adversarial training on letterboxed batches."""
    config = AttackConfig(method=kind, eps=eps, alpha=alpha, steps=steps, loss=loss,
                          random_start=True).check()

    def adv(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        goal = objective(model, targets.to(images.device), config.loss)
        return perturb(model, images, goal, config)

    return adv


def describe(config: AttackConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)


def attack_dataset(ck, data: str | Path, out: str | Path, config: AttackConfig, *,
                   images: str | Path | None = None, batch_size: int = 16,
                   device: str = "auto", seed: int = 0,
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
        seed: seed for the random start.
        progress: ``progress(done, total)`` callback.

    Returns:
        A summary: images written, mean and max L∞ change in 8-bit levels.
    """
    import json
    import os
    import shutil

    from PIL import Image

    from prunekit.bench import resolve_device
    from prunekit.data.coco import CocoDetection, loader, read_json

    config.check()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrunekitError(f"{out} exists; remove it or choose another folder")
    dev = resolve_device(device)
    model = ck.build().to(dev)
    dataset = CocoDetection(data, model.img_size, images=images, classes=model.classes,
                            originals=True)
    coco = read_json(data)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names: dict[Any, str] = {}
    done, worst, total_change = 0, 0, 0.0
    try:
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
                                               "source": str(data)}
        (tmp / Path(data).name).write_text(json.dumps(coco))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"images": done, "json": str(out / Path(data).name), "max_change": worst,
            "mean_max_change": total_change / max(done, 1), "eps_levels": config.eps * 255}
