"""The experiment grid's building blocks: one cell, and collecting cells into a table.

A *cell* is one scenario × run × pruning ratio: mask the scored robust model at the ratio
(compacting structured masks, so latency is real), fine-tune it adversarially, then detect on
clean and on PGD-attacked validation images, evaluate both with pycocotools, benchmark it, and
write one ``result.json``. The second study (`make kitti-study`) uses the same cell with a
clean fine-tune (``adv="none"``), none at all (``steps=0``: measured straight after pruning, as
that study did), or no attacked evaluation (``adv_eval=False``); on ground truth converted by
``data kitti`` a cell also reports mAP and mAP50 at each KITTI difficulty level. The Makefile
makes every cell its own target; this module runs a cell in one process with the same library
functions the commands use (one Python start-up per cell instead of seven: on two cores that is
minutes of the grid's budget).

Thresholds: detections are made once at confidence 0.001 and evaluated twice, as they are
(``map``, ``map50``: COCO practice) and keeping only scores ≥ 0.5 (``map_conf05``,
``map50_conf05``: the paper's threshold). Filtering a 0.001 run at 0.5 gives exactly what a
0.5 run would: NMS only lets a higher-scoring box suppress a lower one. The adversarial figures
(``adv_*``) use PGD with the paper's settings (ε 0.05, step 0.02, 5 steps) on the same images.

The schedule study (`make schedule-study`) gives each cell a *schedule*: ``one-shot`` (masked,
compacted for filters, then fine-tuned: the first two studies' cell), ``linear`` or ``cubic``
(pruned while fine-tuning, along :class:`prunekit.schedule.Schedule`, then compacted), or
``sensitivity`` (masked once at per-group ratios allocated from a ``prunekit sensitivity`` CSV for
the MACs or parameters that the uniform ratio leaves, then fine-tuned). Every schedule takes the
same fine-tuning steps, and its ratio 0 is fine-tuned as long too: the control.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from prunekit import checkpoint
from prunekit.attack import AttackConfig
from prunekit.errors import PrunekitError
from prunekit.finetune import TrainConfig
from prunekit.mask import PruneConfig

#: A cell's schedules (:func:`cell`); ``linear`` and ``cubic`` prune while fine-tuning.
SCHEDULES = ("one-shot", "linear", "cubic", "sensitivity")
GRADUAL = ("linear", "cubic")


@dataclass(frozen=True)
class CellSchedule:
    """The schedule study's schedule of a cell (module docstring).

    Attributes:
        name: ``one-shot``, ``linear``, ``cubic`` (the cell's :class:`PruneConfig` carries
            the same ``schedule``) or ``sensitivity``.
        sensitivity: the ``prunekit sensitivity`` CSV of the cell's model (``sensitivity``
            only).
    """

    name: str
    sensitivity: str | None = None

    @property
    def gradual(self) -> bool:
        return self.name in GRADUAL

SCENARIOS: dict[str, dict[str, str]] = {
    "unstructured-deeplift": {"granularity": "weight", "method": "deeplift", "colour": "rgb"},
    "unstructured-hydra": {"granularity": "weight", "method": "hydra", "colour": "rgb"},
    "structured-deeplift": {"granularity": "filter", "method": "deeplift", "colour": "rgb"},
    "structured-hydra": {"granularity": "filter", "method": "hydra", "colour": "rgb"},
    "unstructured-deeplift-grey": {"granularity": "weight", "method": "deeplift",
                                   "colour": "grey"},
}


def detections_frame(ck, val: str, *, images: str | Path | None = None, attack=None,
                     batch_size: int = 32, seed: int = 0, device: str = "cpu") -> pd.DataFrame:
    """Detections at confidence 0.001 on a COCO dataset, as the frame ``evaluate`` takes."""
    from prunekit.detect import detect_dataset, to_frame

    _, ids, results = detect_dataset(ck, data=val, images=images, conf=0.001,
                                     batch_size=batch_size, device=device, attack=attack,
                                     seed=seed)
    return to_frame(results, ids)


def _metrics(dets: pd.DataFrame, val: str, prefix: str) -> dict[str, Any]:
    from prunekit.data.coco import read_json
    from prunekit.evaluate import DIFFICULTIES, evaluate

    out: dict[str, Any] = {}
    gt = read_json(val)
    low = evaluate(dets, gt)
    high = evaluate(dets[dets.score >= 0.5], gt, per_class=False)
    for key in ("map", "map50", "map75"):
        out[f"{prefix}{key}"] = low[key]
        out[f"{prefix}{key}_conf05"] = high[key]
    for name, ap in low.get("per_class", {}).items():
        out[f"{prefix}ap.{name}"] = ap
    for name, ap in low.get("per_class_ap50", {}).items():
        out[f"{prefix}ap50.{name}"] = ap
    if any("difficulty" in a for a in gt.get("annotations", [])):
        for level in DIFFICULTIES:
            at = evaluate(dets, gt, per_class=False, difficulty=level)
            out[f"{prefix}map.{level}"], out[f"{prefix}map50.{level}"] = at["map"], at["map50"]
    return out


@dataclass(frozen=True)
class Measure:
    """How a cell measures its model: detections on ``val`` (clean, and under ``attack``),
    evaluated, then the size and latency.

    Attributes:
        val: validation COCO JSON.
        images: its image root (None: the JSON's folder).
        attack: the evaluation attack (the paper's PGD: ε 0.05, step 0.02, 5 steps), giving the
            ``adv_*`` metrics; None: clean only.
        bench_seconds: seconds of timed runs for the latency.
        runtime: the latency's runtime (see :mod:`prunekit.bench`). Eager by default: a latency
            curve must use one runtime throughout, and oneDNN Graph cannot compile some of the
            1- to 3-channel layers that 95-99 % filter pruning of the small model leaves.
        threads: CPU threads (1 when cells run side by side).
        seed: seed of the evaluation attack's random start.
    """

    val: str
    images: str | None = None
    attack: AttackConfig | None = AttackConfig(method="pgd", eps=0.05, alpha=0.02, steps=5)
    bench_seconds: float = 1.0
    runtime: str = "eager"
    threads: int = 1
    seed: int = 0


def cell(model: str | Path, out: str | Path, *, scenario: str, run: int, prune: PruneConfig,
         train: TrainConfig | None, attack: AttackConfig | None, measure: Measure,
         method: str | None = None, device: str = "cpu",
         reuse: str | Path | None = None,
         schedule: CellSchedule | None = None) -> dict[str, Any]:
    """Run one grid cell and write ``out/result.json`` (and ``out/model.st``).

    Args:
        model: the scored robust checkpoint (``prune.ratio`` 0: any checkpoint, used as it is).
        out: the cell's folder.
        scenario: scenario name (recorded; its granularity, method and colour too).
        run: run number.
        prune: the pruning (ratio and granularity; filter masks are compacted before
            fine-tuning, ``prune.compact``: the compacted model computes the same function,
            trains faster and times honestly).
        train: the fine-tune after pruning; None: measured straight after pruning.
        attack: the fine-tune's attack (``fgsm``: FGSM with random start; ``pgd``); None: a
            clean fine-tune.
        measure: the evaluation and the latency.
        method: the score method the model was pruned by (recorded; default: the scenario's).
        device: where the cell trains, detects and is timed (``cpu`` or ``cuda``; a CUDA cell
            also reports its latency on CUDA).
        reuse: the ``result.json`` of an identical cell to copy instead of measuring again
            (ratio 0: the four colour scenarios share the same unpruned model), relabelled for
            this scenario.
        schedule: the schedule study's schedule (recorded). With any schedule, ratio 0 is
            fine-tuned under ``attack`` too. None: the first two studies' cell.
    """
    import torch

    from prunekit.bench import resolve_runtime
    from prunekit.device import resolve_device
    from prunekit.score import METHODS

    # The scenario is a label the Makefile chooses (the first study's five, the second study's
    # `<model>.<granularity>.<state>`): any folder-safe name; what it implies is checked below.
    if not scenario or "/" in scenario or scenario.startswith("."):
        raise PrunekitError(f"--scenario {scenario!r} is not a usable name; give a label "
                            f"without '/' such as structured-deeplift")
    if run < 1:
        raise PrunekitError(f"--run must be at least 1, got {run}")
    if method is not None and method not in METHODS:
        raise PrunekitError(f"--method {method!r} is unknown; use one of {', '.join(METHODS)}")
    prune.check()
    _check_schedule(schedule, prune, train)
    torch.set_num_threads(measure.threads)
    resolve_runtime(measure.runtime, resolve_device(device))  # a bad --runtime fails first
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = {"scenario": scenario, "run": run, "ratio": prune.ratio,
              **SCENARIOS.get(scenario, {"granularity": prune.granularity}),
              **({"scope": prune.scope} if prune.scope != "layer" else {}),
              **({"method": method} if method else {}),
              "finetune_steps": train.steps if train is not None else 0,
              **({"schedule": schedule.name} if schedule else {}),
              "source": str(model)}
    if reuse is not None:
        row = _reused(reuse, prune.ratio, labels)
    else:
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        ck = _pruned(checkpoint.load(model), prune, train, attack, times, device, schedule)
        path = out / "model.st"
        checkpoint.save(ck, path)
        ck = checkpoint.load(path)
        labels["family"] = ck.family
        row = {**labels, **_measured(ck, measure, times, device=device)}
        times["total"] = time.perf_counter() - t0
        row.update({f"seconds_{k}": round(v, 2) for k, v in times.items()})
    checkpoint.write_atomic(out / "result.json", json.dumps(row, indent=1).encode())
    return row


def _reused(reuse: str | Path, ratio: float, labels: dict[str, Any]) -> dict[str, Any]:
    """An identical ratio-0 cell's row, relabelled."""
    if ratio != 0:
        raise PrunekitError("--reuse is for ratio 0 cells, whose model is the same in every "
                            "scenario of a colour mode")
    try:
        row = json.loads(Path(reuse).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PrunekitError(f"--reuse {reuse}: cannot read it ({e}); run that cell first") \
            from None
    # The copied cell's fine-tune is what it measured, whatever this call's --steps say.
    row.update(**{k: v for k, v in labels.items() if k != "finetune_steps"},
               reused_from=str(reuse))
    return row


def _check_schedule(schedule: CellSchedule | None, prune: PruneConfig,
                    train: TrainConfig | None) -> None:
    """Refuse a schedule its other settings do not match, before anything runs."""
    if schedule is None:
        return
    name = schedule.name
    if name not in SCHEDULES:
        raise PrunekitError(f"--schedule {name!r} is unknown; use one of {', '.join(SCHEDULES)}")
    if train is None:
        raise PrunekitError(f"--schedule {name} compares fine-tunes; give --steps above 0")
    if (name == "sensitivity") != (schedule.sensitivity is not None):
        raise PrunekitError("--schedule sensitivity takes --ratios-from SENSITIVITY.csv, and "
                            "only it does")
    if schedule.gradual and prune.ratio > 0:
        from prunekit.schedule import Schedule

        if prune.schedule != name:
            raise PrunekitError(f"--schedule {name}: the pruning's schedule is "
                                f"{prune.schedule}")
        Schedule.of(prune).check(train.steps)


def _pruned(ck, prune: PruneConfig, train: TrainConfig | None, attack: AttackConfig | None,
            times: dict[str, float], device: str, schedule: CellSchedule | None = None):
    """The cell's model: masked (compacted for filters; at allocated ratios for the
    ``sensitivity`` schedule), then fine-tuned (under ``attack`` unless it is None; not at all
    without ``train``); pruned while fine-tuning for a gradual ``schedule``. Ratio 0 is the
    model as it is, without its scores: in the first study the robust model itself, elsewhere
    fine-tuned the same way (the control for the fine-tune itself)."""
    from prunekit.finetune import finetune
    from prunekit.mask import mask

    gradual = schedule is not None and schedule.gradual and prune.ratio > 0
    if prune.ratio == 0:
        ck.scores = {}
        if train is None or (attack is not None and schedule is None):
            return ck  # the first study's ratio 0: the robust model
    elif not gradual:
        t = time.perf_counter()
        if schedule is not None and schedule.sensitivity is not None:
            ck, prune = _allocated(ck, prune, schedule.sensitivity)
        ck = mask(ck, prune)
        times["mask"] = time.perf_counter() - t
    if train is None:
        return ck
    t = time.perf_counter()
    ck = finetune(ck, train, attack, device=device, prune=prune if gradual else None)
    times["finetune"] = time.perf_counter() - t
    return ck


def _allocated(ck, prune: PruneConfig, sensitivity: str | Path):
    """The checkpoint (its history noting the allocation) and the pruning at per-group ratios
    from ``sensitivity`` for the MACs (filters) or non-zero parameters (weights) that
    ``prune.ratio`` everywhere leaves: the least predicted mAP loss at the uniform cost, no
    group beyond the smallest measured ratio above the uniform one (the ceiling of
    :mod:`prunekit.budget`, since stop 34: unbounded, the allocation pruned groups that were
    free alone so far that together they lost what uniform pruning kept)."""
    import copy
    from dataclasses import replace

    from prunekit.budget import Costs
    from prunekit.sensitivity import ratios_for_budget

    costs = Costs(ck, prune.granularity)
    kind = "macs" if prune.granularity == "filter" else "params"
    uniform = costs.of({label: prune.ratio for label in costs.labels})
    fraction = uniform[kind] / costs.base[kind]
    alloc, _ = ratios_for_budget(ck, sensitivity, target=kind, value=fraction,
                                 granularity=prune.granularity,
                                 ceiling_above=prune.ratio)
    staged = copy.copy(ck)
    staged.history = list(ck.history)
    staged.add_history("allocate", {"sensitivity": str(sensitivity), "metric": "map",
                                    "granularity": prune.granularity, "uniform": prune.ratio,
                                    **alloc.record()})
    return staged, replace(prune, ratio=0.0,
                           ratios={g: r for g, r in alloc.ratios.items() if r > 0})


def _measured(ck, measure: Measure, times: dict[str, float], *,
              device: str = "cpu") -> dict[str, Any]:
    """Clean (and attacked) mAP, and the model's size and latency."""
    from prunekit.bench import bench

    val = str(measure.val)
    t = time.perf_counter()
    clean = detections_frame(ck, val, images=measure.images, attack=None, batch_size=32,
                             seed=measure.seed, device=device)
    times["detect"] = time.perf_counter() - t
    t = time.perf_counter()
    row = _metrics(clean, val, "")
    times["evaluate"] = time.perf_counter() - t
    if measure.attack is not None:
        t = time.perf_counter()
        attacked = detections_frame(ck, val, images=measure.images,
                                    attack=measure.attack.check(), batch_size=32,
                                    seed=measure.seed,
                                    device=device)
        times["detect_pgd"] = time.perf_counter() - t
        t = time.perf_counter()
        row.update(_metrics(attacked, val, "adv_"))
        times["evaluate"] += time.perf_counter() - t
    t = time.perf_counter()
    figures = bench(ck, threads=measure.threads, min_run_time=measure.bench_seconds,
                    runtime=measure.runtime)
    if device != "cpu":  # the CPU figure keeps every cell comparable; CUDA's goes beside it
        gpu = bench(ck, device=device, latency=True, min_run_time=measure.bench_seconds,
                    runtime="eager")
        row["latency_cuda_ms"] = gpu["latency_ms"]
    times["bench"] = time.perf_counter() - t
    for key in ("latency_ms", "latency_iqr_ms", "macs", "macs_nonzero", "flops", "params_total",
                "params_nonzero", "sparsity", "bytes_stored", "bytes_dense",
                "compression_ratio"):
        row[key] = figures[key]
    row["threads"] = measure.threads
    row["runtime"] = figures["runtime"]
    return row


def collect(root: str | Path, times: str | Path | None = None) -> pd.DataFrame:
    """Every ``<scenario>/run<k>/r<ratio>/result.json`` under ``root`` as one long table,
    sorted by scenario, run and ratio.

    With ``times`` (the grid's ``times.log``: ``STAGE TARGET MILLISECONDS`` per step), each
    pruned cell (ratio above 0) also gets ``seconds_score``: the time of the step that wrote the
    checkpoint it started from (its ``source``, a score file in the grids), as the paper's
    finding on the cost of DeepLIFT's scores needs.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise PrunekitError(f"{root} {what}; give the grid's folder (its OUT, holding "
                            f"<scenario>/run<k>/r<ratio>/result.json)")
    files = sorted(root.glob("*/run*/r*/result.json"))
    if not files:
        raise PrunekitError(f"no cell results under {root} (expected "
                            f"<scenario>/run<k>/r<ratio>/result.json); run the grid first")
    rows = []
    for f in files:
        try:
            rows.append(json.loads(f.read_text()))
        except json.JSONDecodeError as e:
            raise PrunekitError(f"{f} is not valid JSON ({e.msg}); delete it and run the grid "
                                f"again") from None
    for f, row in zip(files, rows, strict=True):
        missing = [k for k in ("scenario", "run", "ratio") if not isinstance(row, dict) or
                   k not in row]
        if missing:
            raise PrunekitError(f"{f} has no {', '.join(missing)}: it is not a cell result; "
                                f"delete it and run the grid again")
        if not _in_its_folder(f, row):
            scenario, run, ratio = f.parts[-4:-1]
            raise PrunekitError(f"{f} holds scenario {row['scenario']!r}, run {row['run']}, "
                                f"ratio {row['ratio']}, not the cell its folder names "
                                f"({scenario}, {run}, {ratio}): a result copied or moved; "
                                f"delete it and run that cell again")
    df = pd.DataFrame(rows)
    if times is not None:
        steps = _step_times(times)
        if "source" in df.columns:
            seconds = df["source"].map(lambda s: steps.get(_key(s)) if isinstance(s, str)
                                       else None)
            df["seconds_score"] = seconds.where(df["ratio"] > 0)
    if "source" in df.columns:  # relative to the grid, so two runs of one grid compare equal
        df["source"] = df["source"].map(lambda s: _below(s, root) if isinstance(s, str) else s)
    lead = ["scenario", "run", "ratio", "granularity", "method", "colour"]
    cols = [c for c in lead if c in df.columns] + sorted(c for c in df.columns if c not in lead)
    return df[cols].sort_values(["scenario", "run", "ratio"]).reset_index(drop=True)


def _in_its_folder(path: Path, row: dict[str, Any]) -> bool:
    """Whether a cell's result names the cell its folder does: ``<scenario>/run<k>/r<ratio>``."""
    scenario, run, ratio = path.parts[-4:-1]
    try:
        return (scenario == str(row["scenario"]) and int(run[3:]) == int(row["run"])
                and abs(float(ratio[1:]) - float(row["ratio"])) < 1e-9)
    except (TypeError, ValueError):
        return False


def _below(path: str, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside it, else as it was recorded."""
    rel = os.path.relpath(_key(path), _key(str(root)))
    return path if rel.startswith("..") else rel


def _key(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _step_times(path: str | Path) -> dict[str, float]:
    """Seconds per target from a ``times.log`` (the last line of a target wins)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise PrunekitError(f"--times {path}: cannot read it ({e.strerror}); give the grid's "
                            f"times.log") from None
    out = {}
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) != 3 or not parts[2].isdigit():
            raise PrunekitError(f"{path}, line {n}: expected 'STAGE TARGET MILLISECONDS', got "
                                f"{line[:60]!r}; give the times.log the grid's steps write")
        out[_key(parts[1])] = int(parts[2]) / 1000
    return out


def subset(src: str | Path, dest: str | Path, images: int) -> int:
    """Write the first ``images`` images of a COCO JSON (by id) and their annotations; paths
    stay relative to the same folder, so ``dest`` must sit beside ``src``."""
    from prunekit.data.coco import read_json

    if images < 1:
        raise PrunekitError(f"--images must be at least 1, got {images}")
    data = read_json(src)
    keep = sorted(data["images"], key=lambda im: im["id"])[:images]
    ids = {im["id"] for im in keep}
    data["images"] = keep
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    if Path(dest).resolve().parent != Path(src).resolve().parent:
        raise PrunekitError(f"{dest} must be in the same folder as {src}, so image paths stay "
                            f"valid")
    checkpoint.write_atomic(dest, json.dumps(data).encode())
    return len(keep)
