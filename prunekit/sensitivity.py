"""Sensitivity analysis (``prunekit sensitivity``): what pruning each group alone costs.

For each set of units :class:`~prunekit.mask.Units` prunes (a prunable conv or linear weight for
``weight`` and ``kernel`` granularity; a channel group of
:meth:`~prunekit.models.base.Detector.channel_groups` for ``filter``, with everything coupled to
it: filters joined by residual additions go as one, and every conv that reads its channels,
through a concatenation too, loses them), and for each ratio, the checkpoint is pruned by its
scores at that ratio in that set alone (:func:`~prunekit.mask.make_masks` with a ratio for that
set, exactly what ``prunekit mask`` would make) and measured on a validation subset: mAP as
``detect --conf 0.001`` then ``evaluate`` give it, and with an attack, mAP on the attacked images
as ``detect --attack`` gives it. Pruning a whole coupled group, never one member of it, matters:
an analyser that pruned one member of a residual-coupled group saw no loss at all, because the
group's other members carried the channel on (fasterai's PR #40).

**The CSV** has one row per group and ratio, and one for the unpruned model (group
``(unpruned)``, ratio 0): ``group``, ``members`` (the weights whose units it removes, space
separated), ``ratio``, ``params_removed`` and ``macs_removed`` (counted as ``bench`` counts them,
:mod:`prunekit.budget`), ``map``, ``map50``, ``map75`` and with an attack ``adv_map``,
``adv_map50``, ``adv_map75``, then what the measurement depends on, the same in every row:
``granularity``, ``attack``, ``images`` (how many were measured), ``data`` (a digest of the
subset's ground truth), ``scores`` (a digest of the checkpoint's scores), ``model`` (the
checkpoint's fingerprint: family, architecture and a digest of its weights, :func:`fingerprint`)
and ``detection`` (the threshold, NMS IoU and detections per image the mAP was taken at).
``mask --ratios-from`` refuses a CSV whose ``model`` is not the checkpoint's, and a resumed run
one measured with other settings.

**Resuming**: with ``-o out.csv`` the table is rewritten (atomically) after every finished
group, so a run killed at any moment leaves a whole CSV, and run again it measures only the
groups not in it. Groups are measured ``jobs`` processes at a time, each with its own copy of the
model and the images, ``threads / jobs`` threads each.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from prunekit.attack import AttackConfig, describe
from prunekit.budget import Allocation, Costs, Curve, allocate, allocate_latency, ceiling
from prunekit.checkpoint import Checkpoint
from prunekit.device import check_threads
from prunekit.errors import DataError, PrunekitError
from prunekit.files import write_atomic
from prunekit.mask import apply, check_granularity, make_masks

RATIOS = tuple(round(0.1 * k, 1) for k in range(1, 10))
UNPRUNED = "(unpruned)"
METRICS = ("map", "map50", "map75")
SETTINGS = ("model", "granularity", "attack", "images", "data", "scores", "detection")
COLUMNS = ("group", "members", "ratio", "params_removed", "macs_removed", *METRICS,
           *(f"adv_{m}" for m in METRICS), *SETTINGS)


@dataclass(frozen=True)
class SensitivityConfig:
    """What is measured, and how (recorded in every row of the CSV that depends on it).

    Attributes:
        ratios: the ratios each group is pruned at, in (0, 1).
        granularity: ``weight``, ``kernel`` or ``filter``.
        attack: also measure mAP under this attack (as ``detect --attack``).
        max_images: measure on the first this many validation images (by id, as ``grid
            subset`` takes them); all when ``None``.
        conf: detection threshold (0.001: COCO practice for mAP).
        iou: NMS IoU threshold.
        max_det: detections kept per image.
        batch_size: images per forward pass.
        seed: seed of the attack's random start.
    """

    ratios: tuple[float, ...] = RATIOS
    granularity: str = "weight"
    attack: AttackConfig | None = None
    max_images: int | None = None
    conf: float = 0.001
    iou: float = 0.45
    max_det: int = 100
    batch_size: int = 16
    seed: int = 0

    def check(self) -> SensitivityConfig:
        from prunekit.detect import check_thresholds

        check_granularity(self.granularity, "layer")
        if not self.ratios:
            raise PrunekitError("--ratios is empty; give ratios such as 0.1,0.3,0.5")
        bad = [r for r in self.ratios if not 0 < r < 1]  # NaN fails too
        if bad:
            raise PrunekitError(f"--ratios must lie in (0, 1) (the fraction removed), got "
                                f"{bad[0]}")
        if len(set(self.ratios)) != len(self.ratios):
            raise PrunekitError("--ratios lists a ratio twice; give each once")
        if self.max_images is not None and self.max_images < 1:
            raise PrunekitError(f"--max-images must be at least 1, got {self.max_images}")
        if self.batch_size < 1:
            raise PrunekitError(f"--batch-size must be at least 1, got {self.batch_size}")
        check_thresholds(self.conf, self.iou, self.max_det)
        if self.attack is not None:
            self.attack.check()
        return self


def parse_ratios(text: str) -> tuple[float, ...]:
    """``"0.1,0.5,0.9"`` → the ratios, ascending."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PrunekitError(f"--ratios {text!r} is not a comma-separated list of numbers; give "
                            f"e.g. 0.1,0.3,0.5") from None
    return tuple(sorted(values))


# ----------------------------------------------------------------------------- fingerprints


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.is_floating_point():
            t = t + 0.0  # -0.0 → +0.0: a checkpoint file keeps a pruned zero as +0.0
        h.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint(ck: Checkpoint) -> str:
    """The model a measurement belongs to: ``family/arch-name/arch:<digest>/weights:<digest>``
    (SHA-256 of the architecture's JSON and of every tensor of the state dict, zeros of
    either sign alike), the same for a checkpoint wherever it is stored."""
    arch = hashlib.sha256(json.dumps(ck.arch, sort_keys=True).encode()).hexdigest()
    return f"{ck.family}/{ck.arch.get('name', '?')}/arch:{arch[:12]}/weights:" \
           f"{_digest(ck.state)[:16]}"


def scores_digest(ck: Checkpoint) -> str:
    """A digest of the checkpoint's scores (what ranks the units)."""
    return _digest(ck.scores)[:16]


def subset(data: str | Path, max_images: int | None) -> dict[str, Any]:
    """The ground truth of the measured images: all, or the first ``max_images`` by id."""
    from prunekit.data.coco import read_json

    gt = read_json(data)
    if max_images is not None:
        keep = sorted(gt["images"], key=lambda im: im["id"])[:max_images]
        ids = {im["id"] for im in keep}
        gt["images"] = keep
        gt["annotations"] = [a for a in gt["annotations"] if a.get("image_id") in ids]
    return gt


def settings(ck: Checkpoint, gt: dict[str, Any], config: SensitivityConfig) -> dict[str, Any]:
    """The values of the CSV's setting columns for this checkpoint, subset and config."""
    attack = "" if config.attack is None else json.dumps(describe(config.attack),
                                                         sort_keys=True)
    data = hashlib.sha256(json.dumps(gt, sort_keys=True).encode()).hexdigest()[:16]
    detection = json.dumps({"conf": config.conf, "iou": config.iou, "max_det": config.max_det},
                           sort_keys=True)
    return {"granularity": config.granularity, "attack": attack, "images": len(gt["images"]),
            "data": data, "scores": scores_digest(ck), "model": fingerprint(ck),
            "detection": detection}


# ------------------------------------------------------------------------------ measurement


class _Measurer:
    """One process's model, images and costs, measuring groups one at a time."""

    def __init__(self, ck: Checkpoint, data: Path, root: Path, config: SensitivityConfig,
                 device: str) -> None:
        from prunekit.data.coco import CocoDetection, loader
        from prunekit.detect import category_ids
        from prunekit.device import resolve_device

        self.ck, self.config = ck, config
        self.dev = resolve_device(device)
        self.model = ck.build().to(self.dev)
        self.params = self.model.state_dict(keep_vars=True)
        dataset = CocoDetection(data, self.model.transform, images=root,
                                classes=self.model.classes, originals=config.attack is not None)
        self.batches = list(loader(dataset, config.batch_size))
        self.gt = subset(data, None)
        self.ids = category_ids(self.model.classes, data)
        self.costs = Costs(ck, config.granularity)

    def metrics(self) -> dict[str, float | None]:
        from prunekit.attack import attacked_batches
        from prunekit.detect import detect, to_frame
        from prunekit.evaluate import evaluate

        c = self.config
        kinds: list[tuple[str, Any]] = [("", self.batches)]
        if c.attack is not None:
            kinds.append(("adv_", attacked_batches(self.model, self.batches, c.attack,
                                                   seed=c.seed)))
        out: dict[str, float | None] = {}
        for prefix, batches in kinds:
            found = detect(self.model, batches, conf=c.conf, iou=c.iou, max_det=c.max_det,
                           device=self.dev)
            m = evaluate(to_frame(found, self.ids), self.gt, per_class=False)
            out.update({f"{prefix}{k}": m[k] for k in METRICS})
        return out

    def group(self, label: str | None) -> list[dict[str, Any]]:
        """The rows of one group (``None``: the unpruned model's row)."""
        if label is None:
            return [{"group": UNPRUNED, "members": "", "ratio": 0.0, "params_removed": 0,
                     "macs_removed": 0, **self.metrics()}]
        members = " ".join(self.costs.members[self.costs.index(label)])
        rows = []
        for r in self.config.ratios:
            masks = make_masks(self.ck, 0.0, granularity=self.config.granularity,
                               ratios={label: r})
            pruned = apply(self.ck.state, masks)
            self._load(pruned, masks)
            try:
                metrics = self.metrics()
            finally:
                self._load(self.ck.state, masks)
            removed = self.costs.removed(label, r, masks)
            rows.append({"group": label, "members": members, "ratio": r,
                         "params_removed": removed.params, "macs_removed": removed.macs,
                         **metrics})
        return rows

    def _load(self, state: dict[str, torch.Tensor], names) -> None:  # noqa: ANN001
        with torch.no_grad():
            for n in names:
                self.params[n].copy_(state[n])


_WORKER: _Measurer | None = None


def _start_worker(ck_bytes: bytes, name: str, data: Path, root: Path,
                  config: SensitivityConfig, device: str, threads: int) -> None:
    from prunekit import checkpoint

    global _WORKER
    torch.set_num_threads(threads)
    ck = checkpoint.from_bytes(ck_bytes, name)
    _WORKER = _Measurer(ck, data, root, config, device)


def _measure_in_worker(label: str | None) -> list[dict[str, Any]]:
    assert _WORKER is not None  # set by the pool's initializer
    return _WORKER.group(label)


def labels(ck: Checkpoint, granularity: str) -> list[str]:
    """The names of the sets of units ``granularity`` prunes, in model order."""
    from prunekit.mask import Units

    return list(Units(ck.skeleton(), granularity).labels)


def measure(ck: Checkpoint, data: str | Path, config: SensitivityConfig, *,
            images: str | Path | None = None, groups: Sequence[str] | None = None,
            skip: Sequence[str] = (), jobs: int = 1, threads: int | None = None,
            device: str = "cpu") -> Iterator[list[dict[str, Any]]]:
    """Measure every group (or ``groups``) but those in ``skip``, yielding each group's rows
    as it finishes (the unpruned model's row too, unless ``skip`` holds :data:`UNPRUNED`).

    Args:
        ck: a checkpoint with scores.
        data: the validation COCO JSON.
        config: what to measure.
        images: the image root (default: the JSON's folder).
        groups: the groups to measure (default: all, in model order).
        skip: groups already measured.
        jobs: processes measuring groups side by side.
        threads: CPU threads in all (default: torch's), shared among the jobs.
        device: ``cpu``, ``cuda`` or ``auto``.

    Each row holds the CSV's columns (module docstring) but the setting columns, which
    :func:`settings` gives.
    """
    config.check()
    if jobs < 1:
        raise PrunekitError(f"--jobs must be at least 1, got {jobs}")
    check_threads(threads)
    if not ck.scores:
        raise PrunekitError(f"{ck.name} has no scores; run `prunekit score` on this checkpoint "
                            f"first (sensitivity prunes by them, as `mask` does)")
    make_masks(ck, 0.0, granularity=config.granularity)  # every score there and usable
    every = labels(ck, config.granularity)
    chosen = list(groups) if groups else every
    unknown = [g for g in chosen if g not in every]
    if unknown:
        raise PrunekitError(f"--group {unknown[0]!r} is not a group of {ck.name} at "
                            f"{config.granularity} granularity; it has {_some(every)}")
    todo: list[str | None] = ([None] if UNPRUNED not in skip else []) + \
        [g for g in chosen if g not in skip]
    if not todo:
        return
    gt = subset(data, config.max_images)
    root = Path(images) if images is not None else Path(data).resolve().parent
    threads = threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="prunekit-sensitivity-") as tmp:
        path = Path(tmp) / "val.json"
        path.write_text(json.dumps(gt))
        if jobs == 1 or len(todo) == 1:
            yield from _serial(ck, path, root, config, device, todo)
        else:
            yield from _parallel(ck, path, root, config, device, todo, jobs,
                                 max(1, threads // jobs))


def _some(names: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return f"{len(names)} groups: {shown}" + (", ..." if len(names) > n else "")


def _serial(ck: Checkpoint, subset: Path, root: Path, config: SensitivityConfig, device: str,
            todo: list[str | None]) -> Iterator[list[dict[str, Any]]]:
    worker = _Measurer(ck, subset, root, config, device)
    for label in todo:
        yield worker.group(label)


def _parallel(ck: Checkpoint, subset: Path, root: Path, config: SensitivityConfig,
              device: str, todo: list[str | None], jobs: int,
              threads: int) -> Iterator[list[dict[str, Any]]]:
    import multiprocessing

    from prunekit.checkpoint import to_bytes

    # Spawned, not forked: a fork of a process whose OpenMP threads have run can hang.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context,
                             initializer=_start_worker,
                             initargs=(to_bytes(ck), ck.name, subset, root, config, device,
                                       threads)) as pool:
        pending = {pool.submit(_measure_in_worker, label) for label in todo}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()


# ------------------------------------------------------------------------------------ table


def table(rows: Sequence[dict[str, Any]], order: Sequence[str],
          setting: dict[str, Any]) -> pd.DataFrame:
    """The CSV's frame: the unpruned row first, then the groups in model order (``order``),
    ratios ascending; every row with ``setting``'s columns."""
    frame = pd.DataFrame([{**r, **setting} for r in rows])
    for c in COLUMNS:
        if c not in frame:
            frame[c] = None
    rank = {g: i for i, g in enumerate([UNPRUNED, *order])}
    frame["_rank"] = frame["group"].map(lambda g: rank.get(g, len(rank)))
    frame = frame.sort_values(["_rank", "ratio"], kind="stable").drop(columns="_rank")
    if setting.get("attack", "") == "":
        frame = frame.drop(columns=[f"adv_{m}" for m in METRICS])
    return frame[[c for c in COLUMNS if c in frame]].reset_index(drop=True)


def to_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.17g").encode()


def write(frame: pd.DataFrame, path: str | Path) -> None:
    """Write the CSV atomically."""
    write_atomic(path, to_csv(frame))


_RECORDED_LATER = ("detection",)  # absent from the CSVs of earlier versions: read as ""
_REQUIRED = ("group", "members", "ratio", "map",
             *(c for c in SETTINGS if c not in _RECORDED_LATER))


def read(source: str | Path) -> pd.DataFrame:
    """A sensitivity CSV, checked: its columns, one model and one setting throughout, ratios in
    (0, 1) and the unpruned row."""
    import io

    path = Path(source)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; give the sensitivity CSV") from None
    what = f"{path} is not a sensitivity CSV"
    fix = "write one with `prunekit sensitivity CHECKPOINT --data val.json -o sens.csv`"
    try:
        frame = pd.read_csv(io.BytesIO(raw), dtype={c: str for c in
                                                    ("group", "members", *SETTINGS)},
                            keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{what} ({' '.join(str(e).split())[:80]}); {fix}") from None
    missing = [c for c in _REQUIRED if c not in frame]
    if missing:
        raise DataError(f"{what} (no {missing[0]!r} column); {fix}")
    for c in _RECORDED_LATER:
        if c not in frame:
            frame[c] = ""
    for c in SETTINGS:
        if frame[c].nunique() > 1:
            raise DataError(f"{path} mixes rows of different {c}s; measure again into a new "
                            f"file")
    numeric = pd.to_numeric(frame["ratio"], errors="coerce")
    metric = pd.to_numeric(frame["map"], errors="coerce")
    if numeric.isna().any() or metric.isna().any():
        raise DataError(f"{what} (a ratio or map that is not a number); {fix}")
    frame["ratio"] = numeric
    unpruned = frame["group"] == UNPRUNED
    if not unpruned.any():
        raise DataError(f"{path} has no {UNPRUNED} row; run `prunekit sensitivity` into it "
                        f"again to measure it")
    if not frame.loc[~unpruned, "ratio"].between(0, 1, inclusive="neither").all():
        raise DataError(f"{path} holds ratios outside (0, 1); {fix}")
    return frame


def check_resumable(frame: pd.DataFrame, source: str | Path, setting: dict[str, Any],
                    ratios: Sequence[float]) -> None:
    """Refuse to add to a CSV measured with other settings or ratios."""
    for key in SETTINGS:
        old, new = str(frame[key].iloc[0]), str(setting[key])
        if key in _RECORDED_LATER and old == "":
            raise PrunekitError(f"{source} does not say which {key} settings it was measured "
                                f"with (an earlier prunekit wrote it); give another -o")
        if old != new:
            raise PrunekitError(f"{source} was measured with another {key} ({_short(old)}, now "
                                f"{_short(new)}); give another -o, or the same settings to "
                                f"resume it")
    measured = frame.loc[frame["group"] != UNPRUNED]
    for group, rows in measured.groupby("group"):
        if sorted(rows["ratio"]) != sorted(ratios):
            raise PrunekitError(f"{source} holds group {group!r} at ratios "
                                f"{','.join(f'{r:g}' for r in sorted(rows['ratio']))}, not "
                                f"--ratios {','.join(f'{r:g}' for r in sorted(ratios))}; give "
                                f"the same --ratios, or another -o")


def _short(text: str) -> str:
    if not text:
        return "none"
    return text if len(text) <= 60 else text[:57] + "..."


def check_model(frame: pd.DataFrame, source: str | Path, ck: Checkpoint) -> None:
    """Refuse a CSV measured on another model than ``ck``."""
    theirs, ours = str(frame["model"].iloc[0]), fingerprint(ck)
    if theirs != ours:
        raise PrunekitError(f"{source} was measured on another model ({theirs}), not "
                            f"{ck.name} ({ours}); run `prunekit sensitivity` on this "
                            f"checkpoint")


def curves(frame: pd.DataFrame, metric: str = "map") -> tuple[float, dict[str, Curve]]:
    """The unpruned model's ``metric`` and each group's curve of it."""
    if metric not in frame or frame[metric].isna().any() or (frame[metric] == "").any():
        have = [m for m in (*METRICS, *(f"adv_{m}" for m in METRICS))
                if m in frame and not frame[m].isna().any()]
        raise PrunekitError(f"the sensitivity CSV has no {metric!r} values; use --metric "
                            f"{' or '.join(have)}" + (", or measure with --adv" if
                                                       metric.startswith("adv_") else ""))
    values = pd.to_numeric(frame[metric])
    unpruned = frame["group"] == UNPRUNED
    base = float(values[unpruned].iloc[0])
    out = {}
    for group, rows in frame.loc[~unpruned].assign(_v=values).groupby("group", sort=False):
        rows = rows.sort_values("ratio")
        out[str(group)] = Curve(tuple(float(r) for r in rows["ratio"]),
                                tuple(float(v) for v in rows["_v"]))
    return base, out


# ------------------------------------------------------------------------------ allocation


def ratios_for_budget(ck: Checkpoint, source: str | Path, *, target: str, value: float,
                      metric: str = "map", granularity: str | None = None,
                      runtime: str = "auto", device: str = "cpu", threads: int | None = None,
                      min_run_time: float = 1.0, max_ratio: float | None = None,
                      ceiling_above: float | None = None) -> tuple[Allocation, str]:
    """Per-group ratios for a budget from a sensitivity CSV of this checkpoint
    (:mod:`prunekit.budget`).

    Args:
        ck: the scored checkpoint the CSV was measured on.
        source: the sensitivity CSV.
        target: ``macs`` or ``params`` (``value`` a fraction of the unpruned model's), or
            ``latency`` (``value`` in milliseconds, measured as ``bench`` measures).
        value: the budget.
        metric: the CSV column whose predicted loss is least (``map``, ``adv_map``, ...).
        granularity: the granularity asked for (default: the CSV's); another is refused.
        runtime: ``bench``'s runtime, for latency.
        device: where latency is measured.
        threads: CPU threads for latency.
        min_run_time: seconds of timed runs per latency measurement.
        max_ratio: no group beyond this ratio (None: up to the highest measured).
        ceiling_above: instead of ``max_ratio``, no group beyond the smallest ratio the CSV
            measured above this one (:func:`prunekit.budget.ceiling`).

    Returns:
        The allocation and the granularity the CSV was measured at.
    """
    frame = read(source)
    check_model(frame, source, ck)
    measured = str(frame["granularity"].iloc[0])
    if granularity is not None and granularity != measured:
        raise PrunekitError(f"{source} was measured at {measured} granularity, not "
                            f"{granularity}; leave --granularity out, or measure at "
                            f"{granularity}")
    base, found = curves(frame, metric)
    if ceiling_above is not None:
        if max_ratio is not None:
            raise ValueError("give max_ratio or ceiling_above, not both")
        max_ratio = ceiling(found, ceiling_above)
    costs = Costs(ck, measured)
    for group in found:
        costs.index(group)
    if target == "latency":
        from prunekit.bench import bench

        def time(pruned: Checkpoint) -> float:
            return bench(pruned, device=device, threads=threads, runtime=runtime,
                         min_run_time=min_run_time)["latency_ms"]

        return allocate_latency(costs, found, base, target_ms=value, time=time,
                                max_ratio=max_ratio), measured
    return allocate(costs, found, base, target=target, fraction=value,
                    max_ratio=max_ratio), measured


# ---------------------------------------------------------------------------------- figure


def figure(frame: pd.DataFrame, *, worst: int = 5):
    """One curve per group of mAP (and adversarial mAP, when measured) against the ratio, the
    ``worst`` groups (the largest mean loss over the ratios) in colour and labelled, the others
    grey; the unpruned model's level dashed."""
    from matplotlib.figure import Figure

    metrics = ["map"] + (["adv_map"] if "adv_map" in frame and frame["adv_map"].notna().all()
                         else [])
    fig = Figure(figsize=(8.0 * len(metrics), 5.5), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        base, found = curves(frame, metric)
        loss = {g: sum(base - v for v in c.values) / len(c.values) for g, c in found.items()}
        ranked = sorted(found, key=lambda g: -loss[g])[:worst]
        for g, c in found.items():
            if g not in ranked:
                ax.plot([0, *c.ratios], [base, *c.values], color="0.75", lw=0.8)
        for k, g in enumerate(ranked):
            c = found[g]
            ax.plot([0, *c.ratios], [base, *c.values], lw=1.8, marker="o", ms=3,
                    label=_short(g), color=f"C{k}")
            ax.annotate(_short(g), (c.ratios[-1], c.values[-1]), fontsize=7,
                        xytext=(3, 0), textcoords="offset points", color=f"C{k}")
        ax.axhline(base, color="k", ls="--", lw=0.8, label="unpruned")
        ax.set_xlabel("ratio pruned in the group alone")
        ax.set_ylabel("adversarial mAP" if metric == "adv_map" else "mAP")
        ax.set_title(f"{'adversarial ' if metric == 'adv_map' else ''}mAP, one curve per "
                     f"group ({len(found)}; the {len(ranked)} most sensitive labelled)",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    return fig


def write_figure(frame: pd.DataFrame, path: str | Path, *, worst: int = 5) -> None:
    """The figure as a PNG, written atomically (the same bytes for the same CSV)."""
    from prunekit.stats.figures import figure_png

    if worst < 0:
        raise PrunekitError(f"--worst must be at least 0, got {worst}")
    write_atomic(path, figure_png(figure(frame, worst=worst)))


def default_figure(output: str | Path) -> Path:
    """Where the figure goes by default: beside the CSV, ``.png`` for ``.csv``."""
    path = Path(output)
    return path.with_suffix(".png") if path.suffix else Path(f"{os.fspath(path)}.png")
