"""Export a checkpoint in a format another tool loads: ONNX, for every family
(:mod:`prunekit.onnx`), float or static INT8 (:mod:`prunekit.quantize`, checked against the
float file and measured on held-out images), and each family's own formats (its
``export_options``, e.g. Deformable DETR's Hugging Face ``save_pretrained`` folders), through the
family that knows the format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit import onnx, quantize
from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.models import registry
from prunekit.models.base import Detector


def export(ck: Checkpoint, out: str | Path, *, fmt: str) -> Path:
    """Write ``ck`` to ``out`` in a format its family writes; the output appears complete or
    not at all.

    Args:
        ck: the checkpoint (masks applied: its state is what is written).
        out: the output path (e.g. a folder for ``hf``, which must not exist, or be empty).
        fmt: the name of one of the family's export options (e.g. ``hf``, a
            ``save_pretrained`` folder).

    Returns:
        The path written.
    """
    family = registry.get(ck.family)
    formats = [o.flag for o in family.export_options]
    if f"--{fmt}" not in formats:
        _, other = registry.owner("export", fmt)
        raise PrunekitError(f"{ck.name} is a {ck.family} model, which exports to "
                            f"{', '.join(formats) or 'ONNX only'}; {other.flag} is another "
                            f"family's format")
    family.export(ck.build(), fmt, Path(out))
    return Path(out)


def export_onnx(ck: Checkpoint, out: str | Path, *, batch: int | None = None,
                opset: int = onnx.DEFAULT_OPSET, decoded: bool = False,
                verify: bool = True) -> onnx.Exported:
    """Write ``ck``'s deployment graph to ``out`` as ONNX, checked and (with ``verify``)
    compared with PyTorch through onnxruntime; nothing is written when either fails.

    Args:
        ck: the checkpoint. One with scores and no masks is refused: it is a dense model
            scored for pruning, not a pruned one (``prunekit mask`` comes first).
        out: the ``.onnx`` file.
        batch: a fixed batch size, or None for a dynamic batch dimension.
        opset: the ONNX opset.
        decoded: decoded boxes and scores instead of the raw outputs.
        verify: run the file with onnxruntime and compare its outputs with PyTorch's.

    Returns:
        What was exported and measured.
    """
    _refuse_scored(ck)
    # A checkpoint's state holds its masks' zeros (mask writes them, finetune keeps them).
    exported = onnx.export(ck.build(), batch=batch, opset=opset, decoded=decoded, verify=verify,
                           name=ck.name)
    onnx.write(exported, out)
    return exported


def _refuse_scored(ck: Checkpoint) -> None:
    if ck.scores and not ck.masks:
        raise PrunekitError(f"{ck.name} holds importance scores but no masks: it is the dense "
                            f"model, scored for pruning; prune it first (prunekit mask "
                            f"--ratio R), then export the result")


# -------------------------------------------------------------------------------------- INT8

#: The quality INT8 outputs must keep, as the signal-to-quantization-noise ratio of every
#: output against the float file's on the held-out images (see :func:`export_int8`).
MIN_SQNR_DB = 15.0
# Held-out images whose outputs are compared (the mAP uses all of them).
_COMPARED = 16


@dataclass(frozen=True)
class Int8Config:
    """How ``export --int8`` calibrates and checks: one value, recorded in the file.

    Attributes:
        data: the COCO JSON whose images calibrate (``calib`` of them, drawn with ``seed``).
        calib: calibration images.
        method: ``minmax``, ``entropy`` or ``percentile`` (:mod:`prunekit.quantize`).
        val: the COCO JSON of the check (default ``data``); its images that calibrated are
            left out, so the check is on images the ranges never saw.
        images: the image root of ``data`` and ``val`` (default: each JSON's folder).
        seed: draws the calibration images.
        min_sqnr_db: the least signal-to-quantization-noise ratio an output may have.
        weight_bits: 7 (within ±64, exact on every CPU) or 8 (CPUs with VNNI); see
            :mod:`prunekit.quantize`.
    """

    data: str
    calib: int = 100
    method: str = quantize.DEFAULT_METHOD
    val: str | None = None
    images: str | None = None
    seed: int = 0
    min_sqnr_db: float = MIN_SQNR_DB
    weight_bits: int = quantize.DEFAULT_WEIGHT_BITS

    def check(self) -> Int8Config:
        if self.calib < 1:
            raise PrunekitError(f"--calib must be at least 1 (images that set the INT8 "
                                f"ranges), got {self.calib}; 100 is typical")
        quantize.check_method(self.method)
        quantize.check_weight_bits(self.weight_bits)
        return self


@dataclass(frozen=True)
class Int8Exported:
    """An INT8 export and what its check measured.

    Attributes:
        float: the float export it was quantized from (verified against PyTorch).
        data: the INT8 file's bytes.
        quantized: what was quantized and what stayed in float.
        sqnr_db: output → its signal-to-quantization-noise ratio against the float file on
            the first held-out images (dB; higher is closer).
        metrics: ``float`` and ``int8`` → COCO metrics of each file on the held-out images
            (confidence 0.001).
        held_out: the number of held-out images.
        calibration: the calibration images' ids in ``data``.
    """

    float: onnx.Exported
    data: bytes
    quantized: quantize.Quantized
    sqnr_db: dict[str, float]
    metrics: dict[str, dict[str, Any]]
    held_out: int
    calibration: list[Any]


def export_int8(ck: Checkpoint, out: str | Path, config: Int8Config, *,
                batch: int | None = None, opset: int = onnx.DEFAULT_OPSET) -> Int8Exported:
    """Write ``ck``'s deployment graph to ``out`` as static INT8 (QDQ, per-channel weights),
    calibrated on images of ``config.data``; nothing is written unless the float graph
    matches PyTorch (as :func:`export_onnx` checks) and every INT8 output keeps
    ``config.min_sqnr_db`` against the float file on held-out images. The mAP of both files
    on the held-out images is measured and returned.

    Args:
        ck: the checkpoint (as for :func:`export_onnx`).
        out: the ``.onnx`` file.
        config: calibration and check.
        batch: a fixed batch size, or None for a dynamic batch dimension.
        opset: the ONNX opset.
    """
    config.check()
    _refuse_scored(ck)
    model = ck.build()
    calib_set, chosen, val_set, held = _split(config, model)
    exported = onnx.export(model, batch=batch, opset=opset, name=ck.name)
    size = batch or 1
    feeds = _calibration_feeds(model, calib_set, chosen, exported.graph.inputs, size)
    done = quantize.quantize(exported.data, model.quantization(), feeds,
                             -(-len(chosen) // size), method=config.method,
                             weight_bits=config.weight_bits)
    data = _int8_metadata(done, config, len(chosen))
    sqnr, metrics = _check_int8(exported.data, data, val_set, held, config, ck.name)
    onnx.write_bytes(data, out)
    return Int8Exported(exported, data, done, sqnr, metrics, len(held),
                        [calib_set.images[i]["id"] for i in chosen])


def _split(config: Int8Config, model: Detector) -> tuple[Any, list[int], Any, list[int]]:
    """The calibration dataset and the indices of its calibration images (``calib`` drawn
    with ``seed``), and the check's dataset and the indices of its images that did not
    calibrate (compared by image file)."""
    from prunekit.data.coco import CocoDetection, read_categories

    _check_classes(config.data, read_categories(config.data), model.classes)
    calib_set = CocoDetection(config.data, model.transform, images=config.images,
                              classes=model.classes)
    if config.calib > len(calib_set):
        raise PrunekitError(f"--calib {config.calib} is more than the {len(calib_set)} images "
                            f"of {config.data}; give at most {len(calib_set)}")
    val_set = calib_set if config.val is None else CocoDetection(
        config.val, model.transform, images=config.images, classes=model.classes)
    order = torch.randperm(len(calib_set), generator=torch.Generator().manual_seed(config.seed))
    chosen = sorted(order[:config.calib].tolist())
    used = {calib_set.paths[i] for i in chosen}
    held = [i for i, p in enumerate(val_set.paths) if p not in used]
    if not held:
        raise PrunekitError(f"every image of {config.val or config.data} calibrates, so none "
                            f"is left to check the INT8 model on; lower --calib or give --val")
    return calib_set, chosen, val_set, held


def _check_classes(data: str, categories: list[dict[str, Any]], classes: list[str]) -> None:
    """Calibration images must show the model's own classes."""
    other = [c["name"] for c in categories if c["name"] not in classes]
    if other:
        raise PrunekitError(f"{data} holds classes the model does not detect ("
                            f"{_some(other, 4)}; the model's: {_some(classes, 6)}); calibrate "
                            f"on images of the model's own data")


def _some(names: list[str], n: int) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _calibration_feeds(model: Detector, dataset: Any, chosen: list[int],
                       names: tuple[str, ...], size: int):
    """A function giving a new iterator over the calibration inputs, ``size`` images each
    (the last batch filled up with the first images)."""

    def feeds():
        picks = chosen + chosen[:(-len(chosen)) % size]
        for start in range(0, len(picks), size):
            items = [dataset[i] for i in picks[start:start + size]]
            x = torch.stack([im for im, _, _ in items]).float().div(255)
            values = model.graph_feeds(x, [rec["geometry"] for _, _, rec in items])
            yield {n: v.numpy() for n, v in zip(names, values, strict=True)}

    return feeds


def _int8_metadata(done: quantize.Quantized, config: Int8Config, calib: int) -> bytes:
    import onnx as onnx_lib

    proto = onnx_lib.load_from_string(done.data)
    props = {p.key: p.value for p in proto.metadata_props}
    props["prunekit.precision"] = "int8"
    props["prunekit.quantization"] = quantize.describe(done, method=config.method, calib=calib,
                                                       data=Path(config.data).name,
                                                       weight_bits=config.weight_bits)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _check_int8(float_data: bytes, int8_data: bytes, val_set: Any, held: list[int],
                config: Int8Config, name: str) -> tuple[dict[str, float], dict[str, Any]]:
    """SQNR of each INT8 output against the float file on the first held-out images (an
    error below the bound), and both files' mAP on all of them."""
    from torch.utils.data import Subset

    from prunekit.data.coco import loader, read_json
    from prunekit.detect import category_ids, detect, to_frame
    from prunekit.evaluate import evaluate
    from prunekit.onnxfile import from_file_bytes

    files = {"float": from_file_bytes(float_data, f"{name} (float)").build(),
             "int8": from_file_bytes(int8_data, f"{name} (int8)").build()}
    signal: dict[str, list[np.ndarray]] = {"float": [], "int8": []}
    for images, _, records in loader(Subset(val_set, held[:_COMPARED]), 4):
        geometries = [r["geometry"] for r in records]
        for kind, model in files.items():
            signal[kind].append(model.run(images, geometries))
    names = [o.name for o in files["float"].session().get_outputs()]
    sqnr = {}
    for k, out in enumerate(names):
        ref = np.concatenate([batch[k].ravel() for batch in signal["float"]])
        q = np.concatenate([batch[k].ravel() for batch in signal["int8"]])
        sqnr[out] = quantize.sqnr_db(ref, q)
        if not sqnr[out] >= config.min_sqnr_db:
            raise PrunekitError(f"the INT8 model of {name} is too far from the float one: "
                                f"{out} at {sqnr[out]:.1f} dB signal-to-noise (at least "
                                f"{config.min_sqnr_db:g} dB expected) on "
                                f"{len(held[:_COMPARED])} held-out images; nothing was "
                                f"written; try another "
                                f"--calib-method or more --calib images")
    gt = read_json(val_set.source)
    ids = {val_set.images[i]["id"] for i in held}
    gt["images"] = [im for im in gt["images"] if im["id"] in ids]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
    cats = category_ids(files["float"].classes, val_set.source)
    metrics = {}
    for kind, model in files.items():
        found = detect(model, loader(Subset(val_set, held), 16), conf=0.001)
        metrics[kind] = evaluate(to_frame(found, cats), gt, per_class=False)
    return sqnr, metrics
