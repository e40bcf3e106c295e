"""The ONNX file ``prunekit export`` wrote, as a model: ``detect``, ``evaluate`` (through
``detect``) and ``bench`` take it where they take a checkpoint, so what is shipped is measured
with the same pipeline as what was trained.

The file's metadata (:func:`prunekit.onnx.export` writes it) names the family, the architecture,
the input pipeline, the classes and what the outputs are. From them prunekit builds the family's
module once (its weights are never used) for the two things a file does not hold: the input
transform (original images → the graph's ``images``, and the geometry that maps boxes back) and
the post-processing (decoding, thresholds, NMS). So a file and its checkpoint go through the
same code on both sides of the network; only the network runs elsewhere, in an onnxruntime
session on the CPU. The family turns a batch into the graph's inputs
(:meth:`~prunekit.models.base.Detector.graph_feeds`: Deformable DETR's pixel mask) and the
graph's outputs back into the raw outputs its post-processing reads
(:meth:`~prunekit.models.base.Detector.from_graph`).

Gradients do not flow through onnxruntime (nor through an INT8 graph at all), so a file is not
attacked: adversarial figures for it come from images attacked on its source checkpoint
(``prunekit attack``) and detected by the file, a transferred attack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.checkpoint import Checkpoint, Source, from_bytes, looks_like_onnx, read_bytes
from prunekit.errors import CheckpointError, PrunekitError
from prunekit.models import registry
from prunekit.models.base import Detections, Detector, Geometry, InputTransform, Outputs


@dataclass
class OnnxFile:
    """An exported model file and what its metadata says.

    Attributes:
        data: the file's bytes.
        name: where it was read from, for messages.
        meta: the metadata (``metadata_props``).
        family: the model family.
        arch: the architecture, as its family describes it.
        input: the input pipeline (size, colour mode, normalisation).
        classes: class names in category-id order.
        precision: ``float32`` or ``int8``.
        decoded: the graph outputs decoded boxes and scores, not the raw outputs.
        batch: a fixed batch size, or None for a dynamic one.
        inputs: the graph's input names, in order.
    """

    data: bytes
    name: str
    meta: dict[str, str]
    family: str
    arch: dict[str, Any]
    input: dict[str, Any]
    classes: list[str]
    precision: str = "float32"
    decoded: bool = False
    batch: int | None = None
    inputs: tuple[str, ...] = ("images",)
    _params: list[int] = field(default_factory=list)

    @property
    def stored_bytes(self) -> int:
        return len(self.data)

    @property
    def params(self) -> tuple[int, int]:
        """Parameters of the source model, total and non-zero (recorded at export)."""
        total, nonzero = (self._params + [0, 0])[:2]
        return total, nonzero

    @property
    def quantization(self) -> dict[str, Any] | None:
        """How an INT8 file was quantized (method, calibration images, parts kept in float)."""
        text = self.meta.get("prunekit.quantization")
        return json.loads(text) if text else None

    def describe(self) -> str:
        """One phrase: what the file is, for messages (``model.onnx, an INT8 yolov3 file``)."""
        kind = "an INT8" if self.precision == "int8" else "a float"
        return f"{self.name}, {kind} ONNX file of a {self.family} model"

    def reference(self) -> Detector:
        """The family's module for this architecture, with its initial weights: the input
        transform, the post-processing and the shapes (for counting MACs), never the outputs."""
        model = registry.build(self.family, self.arch, self.input, self.classes)
        return model.eval()

    def build(self, *, threads: int | None = None, decoded_ok: bool = False) -> OnnxDetector:
        """The file as a model (see :class:`OnnxDetector`).

        Args:
            threads: onnxruntime's intra-op threads (default: torch's current setting).
            decoded_ok: accept a file with decoded outputs (timing needs no post-processing);
                otherwise such a file is refused with the fix.
        """
        if self.decoded and not decoded_ok:
            raise PrunekitError(f"{self.name} was exported with --decode: it outputs boxes "
                                f"and scores, not the raw outputs prunekit post-processes; "
                                f"export the checkpoint again without --decode to detect with "
                                f"it")
        return OnnxDetector(self, self.reference(), threads)


def from_file_bytes(data: bytes, name: str = "model.onnx") -> OnnxFile:
    """Parse an exported file; a file prunekit did not write, or one too old to describe its
    model, is refused with one line."""
    import onnx

    try:
        proto = onnx.load_from_string(data)
    except Exception as e:  # protobuf's DecodeError and onnx's own errors
        raise CheckpointError(f"{name} is not an ONNX model (it does not parse: "
                              f"{' '.join(str(e).split())[:120] or type(e).__name__}); give a "
                              f"file `prunekit export` wrote") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if "prunekit.family" not in meta:
        raise CheckpointError(f"{name} is an ONNX model without prunekit's metadata (family, "
                              f"classes, input pipeline): prunekit did not write it; export "
                              f"the checkpoint with `prunekit export model.st -o model.onnx`")
    if "prunekit.model" not in meta:
        raise CheckpointError(f"{name} was written by prunekit "
                              f"{meta.get('prunekit.version', '?')}, before files described "
                              f"their model; export the checkpoint again with this prunekit")
    try:
        model = json.loads(meta["prunekit.model"])
        classes = json.loads(meta["classes"])
        params = json.loads(meta.get("prunekit.params", "[]"))
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{name}: its prunekit metadata {e} is missing or not JSON; "
                              f"export the checkpoint again") from None
    family = meta["prunekit.family"]
    if family not in registry.names():
        raise CheckpointError(f"{name} holds a {family!r} model, a family this prunekit does "
                              f"not know ({', '.join(registry.names())}); upgrade prunekit")
    batch = meta.get("batch", "dynamic")
    return OnnxFile(data=data, name=name, meta=meta, family=family, arch=model["arch"],
                    input=model["input"], classes=classes,
                    precision=meta.get("prunekit.precision", "float32"),
                    decoded=meta.get("prunekit.outputs") == "decoded",
                    batch=None if batch == "dynamic" else int(batch),
                    inputs=tuple(i.name for i in proto.graph.input), _params=params)


def load_model(source: Source = None) -> Checkpoint | OnnxFile:
    """A checkpoint or an exported ONNX file, from a path, bytes, or stdin (``-`` or None)."""
    data, name = read_bytes(source)
    if looks_like_onnx(data, name):
        return from_file_bytes(data, name)
    return from_bytes(data, name)


class OnnxDetector(nn.Module):
    """An exported file run by onnxruntime (CPU) behind the part of the detector interface that
    inference uses: ``transform``, ``classes``, ``forward`` (a batch → raw outputs, through the
    family's :meth:`~prunekit.models.base.Detector.graph_feeds` and
    :meth:`~prunekit.models.base.Detector.from_graph`) and ``postprocess`` (the family's own).

    A file with a fixed batch runs any batch: in chunks of its size, the last one padded.
    """

    runtimes = ("onnxruntime",)

    def __init__(self, file: OnnxFile, reference: Detector, threads: int | None = None) -> None:
        super().__init__()
        self.file = file
        self.family = file.family
        self._reference = [reference]  # a list: not a submodule, so `.to` leaves it alone
        self._threads = threads
        self._sessions: dict[int, Any] = {}

    # ------------------------------------------------------------------ what detect reads

    @property
    def reference(self) -> Detector:
        return self._reference[0]

    @property
    def classes(self) -> list[str]:
        return self.file.classes

    @property
    def num_classes(self) -> int:
        return len(self.file.classes)

    @property
    def transform(self) -> InputTransform:
        return self.reference.transform

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.reference.input_shape

    def to(self, *args: Any, **kwargs: Any) -> OnnxDetector:
        """Itself: the session runs on the CPU; another device is refused."""
        for a in (*args, kwargs.get("device")):
            if isinstance(a, str | torch.device) and torch.device(a).type != "cpu":
                raise PrunekitError(f"{self.file.name} runs in onnxruntime on the CPU here; "
                                    f"use --device cpu")
        return self

    # ------------------------------------------------------------------------- running

    def session(self, threads: int | None = None) -> Any:
        """The onnxruntime session on ``threads`` intra-op threads (default: the model's, else
        torch's current setting), created once per thread count."""
        from prunekit.onnx import session

        n = threads or self._threads or torch.get_num_threads()
        if n not in self._sessions:
            self._sessions[n] = session(self.file.data, threads=n,
                                        nchwc=self.file.precision != "int8")
        return self._sessions[n]

    def feeds(self, x: Tensor, geometries: list[Geometry] | None = None) -> dict[str, np.ndarray]:
        """The session's inputs for a batch (float32 images, the family's other inputs)."""
        values = self.reference.graph_feeds(x.float().cpu(), geometries)
        return {n: v.cpu().numpy() for n, v in zip(self.file.inputs, values, strict=True)}

    def forward(self, x: Tensor, geometries: list[Geometry] | None = None) -> Outputs:
        if self.file.decoded:
            raise PrunekitError(f"{self.file.name} outputs decoded boxes; export it without "
                                f"--decode to detect with it")
        outputs = tuple(torch.from_numpy(a) for a in self.run(x, geometries))
        return self.reference.from_graph(outputs)

    def run(self, x: Tensor, geometries: list[Geometry] | None = None) -> list[np.ndarray]:
        """The graph's outputs for a batch of any size, as onnxruntime gives them (a file
        with a fixed batch runs it in chunks of its size, the last one padded)."""
        size = self.file.batch or x.shape[0]
        parts = []
        for start in range(0, x.shape[0], size):
            chunk = x[start:start + size]
            geo = geometries[start:start + size] if geometries is not None else None
            n = chunk.shape[0]
            if n < size:  # a fixed batch: pad the last chunk with blank images
                chunk = torch.cat((chunk, chunk.new_zeros(size - n, *chunk.shape[1:])))
                geo = geo + [geo[-1]] * (size - n) if geo is not None else None
            got = self.session().run(None, self.feeds(chunk, geo))
            parts.append([a[:n] for a in got])
        return [np.concatenate(p) for p in zip(*parts, strict=True)]

    def postprocess(self, outputs: Outputs, geometries: list[Geometry], *, conf: float,
                    iou: float, max_det: int) -> list[Detections]:
        return self.reference.postprocess(outputs, geometries, conf=conf, iou=iou,
                                          max_det=max_det)


def transferred_attack(data: Any) -> dict[str, Any] | None:
    """The attack a dataset's images went through (``prunekit attack`` records it in the COCO
    JSON's ``info``), or None for clean images."""
    from prunekit.data.coco import read_json

    info = read_json(data).get("info")
    return info.get("prunekit_attack") if isinstance(info, dict) else None
