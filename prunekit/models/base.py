"""The detector family interface: everything the commands ask of a detector, and nothing more.

prunekit knows detectors through *families* (SPEC section 4). A :class:`Family` builds modules
from a checkpoint's ``arch`` and creates or imports new ones; every module it builds is a
:class:`Detector`, whose methods are the seams the commands work through:

- the input transform (:class:`InputTransform`): an image in [0, 1] at its own size → the model
  input, differentiable (attacks optimise original pixels through it), with a :class:`Geometry`
  that maps boxes back to original pixels;
- ``forward`` → raw outputs, a tuple of batch-first tensors, in every mode; the loss is separate
  (:meth:`Detector.loss`), so attacks, HYDRA, Taylor and DeepLIFT get a loss in eval mode;
- :meth:`Detector.postprocess` → boxes in original pixels, scores and labels;
- :meth:`Detector.objective` (what attacks maximise) and, optionally,
  :meth:`Detector.evidence` (what DeepLIFT attributes);
- :meth:`Detector.prunable` weights and :meth:`Detector.channel_groups` (what structured
  pruning removes together, and what it may not remove), which the generic compaction
  (:mod:`prunekit.models.compact`) slices;
- :meth:`Detector.param_groups` for the optimiser and :meth:`Detector.deployed`, the form
  ``bench`` times.

Targets travel between data and families in one neutral form, :class:`Target`: one image's
boxes in its original pixels and class indices, with the geometry that maps the original image
into the model input; each family turns them into what its loss needs.

Members every family must implement are abstract; the others have a documented default that
fits a family which does not need them: ``evidence`` (none: DeepLIFT is refused for the family,
through ``score``'s usual refusal), ``vanish`` (none: the ``obj`` attack is refused),
``loss_sums_batch`` (False), ``uncounted_macs`` (none), ``graph`` (the raw outputs of
``forward``, no decoded form), ``graph_inputs``, ``neutral_inputs`` and ``graph_feeds``
(images only), ``from_graph`` (the graph's outputs as they are), ``quantization``
(convolutions and matrix products), ``deployed`` (the model itself), ``param_groups``,
``prunable``, ``runtimes`` and ``max_grad_norm``. A :class:`Family` declares the options it
adds to ``prunekit init`` and ``prunekit export`` (:class:`Option`); families are installed
through the entry-point group ``prunekit.families`` (:mod:`prunekit.models.registry`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from prunekit.errors import PrunekitError

GREY_WEIGHTS = (0.299, 0.587, 0.114)  # Rec. 601 luma
COLOURS = ("rgb", "grey")
Outputs = tuple[Tensor, ...]


def default_names(n: int) -> list[str]:
    """Class names for a model whose classes were given only as a count."""
    return [f"class{i}" for i in range(n)]


# The largest input side any family accepts: 4096 pixels is ten times YOLOv3-416's side (a
# hundred times its MACs) and over twice the full KITTI width; a larger one is a typo, and its
# first forward pass would try to allocate terabytes.
MAX_INPUT_SIDE = 4096

# ------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class Geometry:
    """How one original image maps into the model input: scaled by ``scale`` (the same on both
    axes), then shifted by ``(pad_x, pad_y)`` input pixels.

    Attributes:
        width: the original image's width in pixels.
        height: its height.
        scale: input pixels per original pixel.
        pad_x: horizontal offset in input pixels.
        pad_y: vertical offset in input pixels.
    """

    width: int
    height: int
    scale: float = 1.0
    pad_x: float = 0.0
    pad_y: float = 0.0

    def _offset(self, boxes: Tensor) -> Tensor:
        return boxes.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])

    def to_input(self, boxes_xyxy: Tensor) -> Tensor:
        """Original pixels → input pixels."""
        return boxes_xyxy * self.scale + self._offset(boxes_xyxy)

    def to_original(self, boxes_xyxy: Tensor) -> Tensor:
        """Input pixels → original pixels."""
        return (boxes_xyxy - self._offset(boxes_xyxy)) / self.scale

    def clip(self, boxes_xyxy: Tensor) -> Tensor:
        """Boxes in original pixels clipped to the image."""
        from torchvision.ops import clip_boxes_to_image

        return clip_boxes_to_image(boxes_xyxy, (self.height, self.width))


class InputTransform(ABC):
    """Original images → the model's input, and the geometry of that map.

    ``__call__`` is differentiable, so an attack can optimise original pixels through it;
    :meth:`image` is the same map for one uint8 image, as datasets feed models (quantised to 8
    bits, as an image file would hold it, so a saved adversarial PNG and the on-the-fly attack
    give the same input).
    """

    size: tuple[int, int]  # the model input's (height, width)

    @abstractmethod
    def geometry(self, width: int, height: int) -> Geometry:
        """The geometry of an original image of this size."""

    @abstractmethod
    def __call__(self, images: Tensor) -> Tensor:
        """N×3×H×W floats in [0, 1], all of one size → N×3×``size`` model input."""

    def image(self, image: Tensor) -> Tensor:
        """One 3×H×W uint8 image → the 3×``size`` uint8 model input."""
        h, w = image.shape[-2:]
        if (h, w) == tuple(self.size) and self.geometry(w, h) == Geometry(w, h):
            return image  # the identity: nothing resampled, nothing rounded
        return quantise(self(image.float().unsqueeze(0).div(255))[0])


def quantise(image: Tensor) -> Tensor:
    """Floats in [0, 1] → uint8, as a PNG stores them."""
    return (image.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class Target:
    """One image's objects in the neutral form every family accepts.

    Attributes:
        boxes: K×4 (x1, y1, x2, y2) in the original image's pixels, float32.
        labels: K class indices of the model (int64).
        geometry: how the original image maps into the model input.
    """

    boxes: Tensor
    labels: Tensor
    geometry: Geometry

    def input_boxes(self) -> Tensor:
        """The boxes in model-input pixels."""
        return self.geometry.to_input(self.boxes)


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes (K×4 xyxy, original pixels), scores (K), labels (K)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


# -------------------------------------------------------------------------- channel groups


@dataclass(frozen=True)
class Slice:
    """Channel ``k`` of a group is index ``offset + k`` along ``dim`` of tensor ``name``."""

    name: str
    dim: int
    offset: int = 0


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are kept or removed together, index by index.

    Attributes:
        name: for messages.
        size: number of channels.
        producers: the parameters whose entries make the channels (conv and linear weight rows,
            biases, normalisation scale and shift): masking a channel zeroes them, and its
            output is then exactly zero.
        statistics: buffers along the channels (BatchNorm running statistics): sliced by
            compaction, never masked.
        consumers: the weights that read the channels (the next layers' input columns): sliced
            by compaction only, since a zero channel contributes nothing to them.
        scored: the weights whose per-channel scores rank the channels (a channel's score is
            the mean of their filter scores).
        prunable: False for channels that must stay (detection outputs, residual streams
            a family does not prune).
    """

    name: str
    size: int
    producers: tuple[Slice, ...]
    statistics: tuple[Slice, ...] = ()
    consumers: tuple[Slice, ...] = ()
    scored: tuple[str, ...] = ()
    prunable: bool = True


# ---------------------------------------------------------------------------------- modules


class Grey(nn.Module):
    """Rec. 601 luma replicated to three channels: part of the model's input pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weights", torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.weights).sum(1, keepdim=True).expand(-1, 3, -1, -1)


class Detector(nn.Module, ABC):
    """A detector as every command sees it (see the module docstring).

    Subclasses set ``arch`` (JSON: everything needed to rebuild the module, widths after
    compaction included), ``input_spec`` (size, colour mode, normalisation) and ``classes``
    (names in category-id order), and name their family in ``family``.
    """

    family: ClassVar[str]
    # The runtimes `bench` may time it in, preferred first (see prunekit.bench).
    runtimes: ClassVar[tuple[str, ...]] = ("eager",)
    # Gradient-norm clipping in training (the family's own recipe).
    max_grad_norm: ClassVar[float] = 10.0
    # Whether `loss` grows with the batch (a per-image mean times the batch size) rather than
    # being a mean: training on a 1/N share of the batch in each of N processes then scales it
    # by N, so that the averaged gradients equal one process's on the whole batch.
    loss_sums_batch: ClassVar[bool] = False
    # Score methods that cannot be right for this family → why (`score` refuses them).
    unsupported_scores: ClassVar[dict[str, str]] = {}
    arch: dict[str, Any]
    input_spec: dict[str, Any]
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    @abstractmethod
    def transform(self) -> InputTransform:
        """The map from original images to this model's input."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one input image."""
        return (3, *self.transform.size)

    @abstractmethod
    def forward(self, x: Tensor, geometries: list[Geometry] | None = None) -> Outputs:
        """N×3×H×W floats in [0, 1] at the input size → raw outputs, batch first.

        ``geometries`` (one per image) tell a family that masks padding (Deformable DETR's
        pixel mask) where each image lies in the input; without them every pixel counts. Every
        caller that knows them passes them.
        """

    # ------------------------------------------------------------------ losses and outputs

    @abstractmethod
    def loss(self, outputs: Outputs, targets: list[Target]) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of raw outputs against targets, in train and in eval mode.

        Returns:
            The total and its weighted parts, among them ``box`` (localisation) and ``cls``
            (classification); its scale is the family's (YOLOv3 sums over images, Deformable
            DETR averages over objects, as HF does).
        """

    def vanish(self, outputs: Outputs) -> Tensor:
        """The "vanishing" attack's objective: larger as every detection fades, no targets.

        Optional: a family without one refuses the ``obj`` attack."""
        raise PrunekitError(f"--loss obj: the {self.family} family defines no vanishing "
                            f"objective; attack with --loss total, cls or box")

    def objective(self, outputs: Outputs, targets: list[Target] | None, kind: str) -> Tensor:
        """What an attack maximises: ``total`` (the loss), ``box`` or ``cls`` (its parts), or
        ``obj`` (:meth:`vanish`)."""
        if kind == "obj":
            return self.vanish(outputs)
        total, parts = self.loss(outputs, targets or [])
        return total if kind == "total" else parts[kind]

    @abstractmethod
    def postprocess(self, outputs: Outputs, geometries: list[Geometry], *, conf: float,
                    iou: float, max_det: int) -> list[Detections]:
        """Detections per image, boxes in original pixels (clipped to the image).

        Args:
            outputs: raw outputs of a batch.
            geometries: each image's geometry.
            conf: minimum score.
            iou: NMS IoU threshold (families without NMS ignore it).
            max_det: most detections kept per image.
        """

    def evidence(self, outputs: Outputs, targets: list[Target]) -> Tensor:
        """DeepLIFT's target: the detector's evidence for the targets' objects, one value per
        row of ``outputs``, linear in the outputs.

        Optional: a family that does not define it cannot be scored by DeepLIFT, and
        :meth:`refused_scores` says so.

        ``outputs`` may hold k·N rows for N targets (Captum's inputs followed by baselines):
        row ``j`` is scored against ``targets[j % N]`` with the same weights for every block,
        so the evidence means the same for inputs and baselines. The weights depend on the
        targets and at most on the first block (Deformable DETR matches queries to objects on
        the real images), and every block is linear in its own outputs.
        """
        raise PrunekitError(self.refused_scores()["deeplift"])

    def has_evidence(self) -> bool:
        """Whether the family defines :meth:`evidence` (what DeepLIFT needs)."""
        return type(self).evidence is not Detector.evidence

    def refused_scores(self) -> dict[str, str]:
        """Score methods this family refuses → why: its ``unsupported_scores``, and DeepLIFT
        when it defines no :meth:`evidence`."""
        refused = dict(self.unsupported_scores)
        if not self.has_evidence():
            refused.setdefault("deeplift", f"the {self.family} family defines no evidence for "
                                           f"DeepLIFT to attribute; score with taylor, hydra, "
                                           f"magnitude or l1-filter")
        return refused

    @abstractmethod
    def ideal_outputs(self, targets: list[Target]) -> Outputs:
        """Raw outputs of a perfect detector for these targets (all in one input size):
        :meth:`postprocess` returns exactly their boxes, with high scores. The conformance
        suite checks post-processing against it."""

    # ------------------------------------------------------------------------- pruning

    def prunable(self) -> list[str]:
        """State-dict names of the prunable weights, in model order: conv and linear weights."""
        return [f"{name}.weight" for name, m in self.named_modules()
                if isinstance(m, nn.Conv2d | nn.Linear)]

    @abstractmethod
    def channel_groups(self) -> list[ChannelGroup]:
        """Every channel space structured pruning knows, prunable or not."""

    @abstractmethod
    def compacted_arch(self, state: dict[str, Tensor]) -> dict[str, Any]:
        """The ``arch`` of this model with the tensor shapes of ``state`` (after compaction)."""

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: weight decay on matrices and kernels, none on norms and
        biases. A group may carry ``lr_scale``, a multiplier of the scheduled rate."""
        decay, no_decay = [], []
        for p in self.parameters():
            (decay if p.ndim > 1 else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def uncounted_macs(self, x: Tensor) -> tuple[int, str]:
        """Multiply–accumulates of ``self(x)`` that ``FlopCounterMode`` cannot see (it counts
        convolutions and matrix products), and what they are; (0, "") when there are none."""
        return 0, ""

    def deployed(self, runtime: str = "eager") -> nn.Module:
        """A copy in the form a deployment runs (what ``bench`` times), for ``runtime``
        (``eager``, ``onednn-graph`` or ``onnxruntime``); same outputs to float rounding."""
        return copy.deepcopy(self).eval()

    def graph(self, *, decoded: bool = False, deployed: bool = True) -> Graph:
        """The graph ONNX export writes: ``images`` (N×3×H×W in [0, 1] at the input size, the
        colour conversion and normalisation inside) and whatever else the family needs, to its
        raw outputs, or with ``decoded`` to ``boxes`` (N×K×4, x1 y1 x2 y2 in input pixels) and
        ``scores`` (N×K×C). ``deployed``: built on :meth:`deployed` (what is exported), or on
        the model as it is (the reference the export is checked against).

        Default: ``forward`` on the images alone, its raw outputs named ``output0``,
        ``output1``…; no decoded form (``decoded`` is refused)."""
        if decoded:
            raise PrunekitError(f"--decode: the {self.family} family has no decoded ONNX graph; "
                                f"export its raw outputs (without --decode)")
        net = self.deployed("onnxruntime") if deployed else copy.deepcopy(self).eval()
        with torch.no_grad():
            count = len(net(torch.zeros(1, *self.input_shape)))
        outputs = tuple(f"output{i}" for i in range(count))
        meaning = {"images": "N x 3 x H x W floats in [0, 1] at the input size",
                   **{name: f"raw output {i} of the {self.family} detector's forward"
                      for i, name in enumerate(outputs)}}
        return Graph(_ImagesOnly(net), ("images",), outputs, meaning)

    def graph_inputs(self, batch: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Seeded inputs for :meth:`graph` (ONNX verification): ``batch`` random images, and a
        family's other inputs at values its images could give."""
        return (torch.rand(batch, *self.input_shape, generator=generator),)

    def neutral_inputs(self, images: Tensor) -> tuple[Tensor, ...]:
        """The inputs of :meth:`graph` for ``images`` (N×3×H×W at the input size), every other
        input at its neutral value (e.g. a pixel mask that masks nothing), as the PyTorch
        runtimes run the model without geometries."""
        return (images,)

    def graph_feeds(self, x: Tensor, geometries: list[Geometry] | None = None) \
            -> tuple[Tensor, ...]:
        """The inputs of :meth:`graph` for a batch ``x`` that :meth:`forward` would take with
        ``geometries``. Default: :meth:`neutral_inputs`, for a family whose other graph inputs
        (if any) do not depend on where each image lies in the batch."""
        return self.neutral_inputs(x)

    def from_graph(self, outputs: Outputs) -> Outputs:
        """The raw outputs :meth:`postprocess` reads, from the outputs of :meth:`graph`
        (not decoded), so an exported file is post-processed by the same code as the model."""
        return outputs

    def quantization(self) -> Quantization:
        """What INT8 export quantizes and what it keeps in float (see :class:`Quantization`)."""
        return Quantization()


class _ImagesOnly(nn.Module):
    """A detector's forward on images alone, as the default graph traces it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Outputs:
        return tuple(self.model(images))


@dataclass(frozen=True)
class Graph:
    """What ONNX export traces (:mod:`prunekit.onnx`): a module whose forward takes the named
    inputs, batch first, and returns the named outputs, with what each holds (written into the
    file's metadata).

    Attributes:
        module: the traced module, in eval mode.
        inputs: the inputs' names, in the forward's order.
        outputs: the outputs' names, in the forward's order.
        meaning: input or output name → what it holds.
        metadata: more metadata the outputs need to be read (e.g. a family's box priors).
    """

    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    meaning: dict[str, str]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Quantization:
    """A family's plan for static INT8 quantization of its :meth:`Detector.graph`.

    Attributes:
        op_types: ONNX operator types quantized (inputs and outputs through QDQ pairs);
            everything else runs in float between them.
        float_modules: glob patterns over module paths (``*.sampling_offsets``; a node's
            path is what ``named_modules`` calls the module it was exported from, with a
            leading dot) whose operators stay in float → why.
        float_ops: operator types outside ``op_types`` that compute and stay in float → why
            (``export --int8`` names them with the modules).
    """

    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    float_modules: dict[str, str] = field(default_factory=dict)
    float_ops: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """An option a family adds to ``prunekit init`` or ``prunekit export`` (the command line
    builds the flag from it, and lists it under the family's name in ``--help``).

    Attributes:
        name: the flag without its dashes (``hf`` is ``--hf``). No two installed families may
            declare the same name for the same command, and none may take a name the command
            has itself (prunekit refuses them at start-up).
        type: the value's type: ``str``, ``int``, ``float``, ``pathlib.Path``, or ``bool`` (a
            flag that is off unless given).
        help: one sentence for ``--help``.
        imports: ``init`` only: the option names a file or folder to import instead of
            creating a member (e.g. ``--cfg``, ``--hf``); otherwise it changes the member
            created (e.g. ``--width``). ``export`` options each name a format the family
            writes, the value where to write it (e.g. ``--hf DIR``).
    """

    name: str
    type: type
    help: str
    imports: bool = False

    @property
    def flag(self) -> str:
        return f"--{self.name}"


class Family(ABC):
    """A kind of detector: builds its modules, and creates or imports new ones.

    A family is installed through the entry-point group ``prunekit.families`` (the entry
    point's name is :attr:`name`, its object the family, e.g. ``yolov3 =
    "prunekit.models.yolov3:FAMILY"``); see :mod:`prunekit.models.registry`.
    """

    name: ClassVar[str]
    members: ClassVar[tuple[str, ...]]
    # The options the family adds to `prunekit init` (member options and imports) and to
    # `prunekit export` (formats it writes).
    init_options: ClassVar[tuple[Option, ...]] = ()
    export_options: ClassVar[tuple[Option, ...]] = ()
    # Members small enough for unit tests, with the `prunekit.init.init` keyword arguments
    # that make them so (the conformance suite builds these; default: the first member as it
    # is).
    small: ClassVar[dict[str, dict[str, Any]]] = {}

    def options(self, command: str) -> tuple[Option, ...]:
        """The options this family adds to ``command`` (``init`` or ``export``)."""
        return {"init": self.init_options, "export": self.export_options}[command]

    def small_members(self) -> dict[str, dict[str, Any]]:
        """:attr:`small`, or the first member with no arguments."""
        return dict(self.small) or {self.members[0]: {}}

    @abstractmethod
    def build(self, arch: dict[str, Any], input_spec: dict[str, Any],
              classes: list[str]) -> Detector:
        """The module an ``arch`` describes (random weights)."""

    @abstractmethod
    def create(self, member: str, classes: list[str], *, img_size: int | None = None,
               grey: bool = False, options: dict[str, Any] | None = None) -> Detector:
        """A member with fresh weights (seed torch's generator first).

        Args:
            member: one of :attr:`members`.
            classes: class names.
            img_size: input size (default: the member's).
            grey: Rec. 601 grey input.
            options: values of the family's member options (:attr:`init_options` that do not
                import), by name; only those given.
        """

    def import_files(self, options: dict[str, Any], classes: list[str] | None, *,
                     img_size: int | None = None, grey: bool = False) -> Detector:
        """A model from this family's own files: ``options`` holds the values of its
        :attr:`init_options` given (at least one that imports)."""
        raise PrunekitError(f"the {self.name} family imports no files")

    def export(self, model: Detector, fmt: str, out: Path) -> None:
        """Write ``model`` as ``fmt`` (the name of one of :attr:`export_options`) to ``out``
        (its value), atomically."""
        raise PrunekitError(f"the {self.name} family exports no format {fmt!r}")

    @abstractmethod
    def input_spec(self, spec: dict[str, Any] | None = None, *, size: int | None = None,
                   colour: str | None = None) -> dict[str, Any]:
        """An input specification: ``spec`` (or the family default) with the size or colour
        mode changed, checked."""
