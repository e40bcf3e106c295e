"""DeepLIFT importance scores for every conv and linear weight, one attribution pass per batch.

The paper initialises pruning scores with DeepLIFT: how much each weight contributes to the
detector's output when the input moves from a reference (baseline) image to the real one.

**Method.** Captum's :class:`~captum.attr.DeepLift` (rescale rule) runs the detector on the
images and their baselines together (Captum concatenates them along the batch, 2N rows) and
back-propagates DeepLIFT multipliers instead of gradients through every LeakyReLU and MaxPool2d
module. For a layer ``z = W ⊛ a + b`` let ``m`` be the multiplier of the target at ``z`` and
``Δa = a(x) − a(baseline)``. Since ``Δz = W ⊛ Δa``, the target's difference-from-reference that
flows through ``z`` is ``Σ m · Δz``, and weight ``W[k, c, i, j]`` carries

    contribution = W[k, c, i, j] · Σ_{images, positions} m · Δa   (at the positions it touches)
                 = W * conv2d_weight(Δa, W.shape, m, stride, padding, dilation, groups)

(``W * (mᵀ Δa)`` for a linear layer). On a network without skip connections the contributions
of each layer sum to ``f(x) − f(baseline)`` (DeepLIFT's summation-to-delta). A weight's score
is the mean over calibration batches of ``|contribution|`` (summed over a batch's images, so
the scale follows the batch size, the ranking does not); a weight that is zero scores zero.

Every layer's ``m`` and ``Δa`` come from ONE DeepLIFT pass per batch, not one
:class:`~captum.attr.LayerDeepLift` call per layer: a forward hook on each layer keeps a
reference to its input (``Δa`` is its first N rows minus its last N) and hooks the gradient of
its output, whose first N rows, after Captum's rules have rewritten the gradients downstream,
are ``m`` (the same numbers as ``LayerDeepLift(..., multiply_by_inputs=False)``). When a layer
feeds a nonlinearity directly, Captum hooks that nonlinearity's input tensor, the very tensor
ours is on, after ours, and ours would read the plain gradient instead of the multiplier; so
such a nonlinearity is handed a clone of the output (what returning ``out.clone()`` from the
forward hook does, but copying only where it is needed). The cost is about two
forward–backward passes (2N rows) plus one weight-gradient convolution per layer, whatever the
number of layers. On CPU a batch is attributed :data:`CPU_CHUNK` images at a time
(contributions are sums over images, so nothing changes but the speed).

Two Captum 0.9 limitations, one worked around: when one nonlinearity feeds another directly
(YOLOv3-tiny's LeakyReLU → MaxPool2d), Captum hands the first the plain gradient rather than the
second's multiplier (captum#1104), which breaks summation-to-delta upstream; the pass gives
each nonlinearity an input tensor of its own (:func:`separate_nonlinearities`), so there the
multipliers are right where stock ``LayerDeepLift`` is not. Captum's MaxPool rule also loses
part of the difference where pooling windows overlap (YOLOv3-tiny's stride-1 maxpool), so
upstream of such a pool summation-to-delta is only approximate; YOLOv3 and the embedded
yolov3-small have no maxpool.

**Target.** DeepLIFT explains one scalar per image. :class:`DetectionEvidence` wraps the
detector and returns its family's *evidence for the ground-truth objects*
(:meth:`~prunekit.models.base.Detector.evidence`): linear in the raw outputs, with weights that
depend on the labels alone, so it means the same for inputs and baselines (YOLOv3's: the raw
outputs of the predictions its loss assigns to the objects; see
``prunekit/models/yolov3/evidence.py`` for what it sums and why). A batch without any labelled
object (an unlabelled image folder) is attributed against the model's own clean detections at
confidence 0.25 (:func:`prunekit.attack.self_targets`); a batch where there is still nothing is
skipped.

**Baselines.** ``black`` (zeros, the default), ``white`` (ones), ``grey`` (0.5) or ``blur`` (a
heavy box blur of the input itself, which keeps colours and removes shapes and edges).

The model's weights, BatchNorm statistics and train/eval mode are left as they were, and every
hook is removed, whatever happens.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from captum.attr import DeepLift
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from prunekit.errors import PrunekitError
from prunekit.models.base import Detector, Target

BASELINES = ("black", "white", "grey", "blur")
SELF_TARGET_CONF = 0.25
# Images per DeepLIFT pass on CPU. Captum runs inputs and baselines as one 2N batch of large,
# short-lived tensors that glibc hands back to the system and faults in again on every pass;
# on the embedded model (batch 32, 160 px) chunks of 8 cut that from ~30 % of the time to
# nothing and make scoring 1.4x faster. GPUs take the whole batch.
CPU_CHUNK = 8

# The modules Captum's DeepLift rewrites gradients for (exact types, as Captum matches them).
NONLINEAR = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.MaxPool1d,
             nn.MaxPool2d, nn.MaxPool3d, nn.Softmax)

Visit = Callable[[str, nn.Module, Tensor, Tensor], None]


def _with_autograd(fn: Callable) -> Callable:
    """Run ``fn`` with autograd on: callers may hold ``no_grad`` or inference mode, and
    tensors made in inference mode could not be updated by the backward hooks."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)
    return wrapper


class DetectionEvidence(nn.Module):
    """A detector's evidence for the ground-truth objects, one scalar per image (N×1).

    Call :meth:`set_targets` before each batch. An input of k·N rows (Captum's inputs followed
    by baselines) is scored against the same N targets in every block of N rows.

    Args:
        model: a :class:`~prunekit.models.base.Detector`.
    """

    def __init__(self, model: Detector) -> None:
        super().__init__()
        self.model = model
        self._targets: list[Target] | None = None

    def set_targets(self, targets: list[Target]) -> None:
        """Set the labels the evidence is about, one :class:`Target` per image of the batch."""
        if not targets:
            raise PrunekitError("a batch needs at least one image, got none")
        labels = torch.cat([t.labels for t in targets])
        if len(labels) and (labels.min() < 0 or labels.max() >= self.model.num_classes):
            raise PrunekitError(f"target classes must lie in 0..{self.model.num_classes - 1} "
                                f"for this model, got up to {int(labels.max())}; score with "
                                f"the dataset the model was trained on")
        self._targets = list(targets)

    def forward(self, x: Tensor) -> Tensor:
        if self._targets is None:
            raise PrunekitError("DetectionEvidence has no targets; call set_targets() first")
        n = len(self._targets)
        if x.shape[0] % n:
            raise PrunekitError(f"DetectionEvidence got {x.shape[0]} images but its targets "
                                f"are for batches of {n}; call set_targets() with this batch")
        geometries = [t.geometry for t in self._targets] * (x.shape[0] // n)
        return self.model.evidence(self.model(x, geometries), self._targets).unsqueeze(1)


def make_baseline(images: Tensor, name: str = "black") -> Tensor:
    """The reference images DeepLIFT compares ``images`` (N×3×H×W in [0, 1]) with.

    ``blur`` is a box blur whose window is a quarter of the image side (count_include_pad off,
    so borders are not darkened): heavy enough that objects lose their shape and edges.
    """
    check_baseline(name)
    if name == "black":
        return torch.zeros_like(images)
    if name == "white":
        return torch.ones_like(images)
    if name == "grey":
        return torch.full_like(images, 0.5)
    k = 2 * (min(images.shape[-2:]) // 8) + 1
    return F.avg_pool2d(images, k, stride=1, padding=k // 2, count_include_pad=False)


def check_baseline(name: str) -> None:
    if name not in BASELINES:
        raise PrunekitError(f"--baseline {name!r} is unknown; use {', '.join(BASELINES)}")


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Conv2d`` and ``nn.Linear``, keyed by its weight's state-dict name."""
    return {f"{name}.weight" if name else "weight": m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


@_with_autograd
def multipliers(scalar_model: nn.Module, inputs: Tensor, baselines: Tensor,
                layers: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """DeepLIFT multipliers of ``scalar_model``'s output at each layer's output, from one pass.

    Equal to ``LayerDeepLift(scalar_model, layer, multiply_by_inputs=False).attribute(inputs,
    baselines, target=0)`` for every layer at once (run inside :func:`separate_nonlinearities`
    when one Captum nonlinearity feeds another directly; otherwise stock Captum is wrong
    upstream of that pair).

    Args:
        scalar_model: returns N×1 (e.g. a :class:`DetectionEvidence` with targets set).
        inputs: N×... inputs.
        baselines: references, the same shape as ``inputs``.
        layers: the layers to report, keyed by any name (e.g. :func:`prunable_layers`).

    Returns:
        Name → N×(layer output shape) multipliers; layers that do not reach the output are
        left out.
    """
    found: dict[str, Tensor] = {}

    def keep(name: str, module: nn.Module, delta: Tensor, m: Tensor) -> None:
        found[name] = m.detach().clone()

    _deeplift_pass(scalar_model, inputs, baselines, layers, keep)
    return found


@_with_autograd
def contributions(scalar_model: nn.Module, inputs: Tensor, baselines: Tensor,
                  layers: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """Signed DeepLIFT contribution of every weight, summed over the batch, from one pass.

    Args:
        scalar_model: returns N×1 (e.g. a :class:`DetectionEvidence` with targets set).
        inputs: N×... inputs.
        baselines: references, the same shape as ``inputs``.
        layers: ``nn.Conv2d`` / ``nn.Linear`` modules keyed by name (e.g.
            :func:`prunable_layers`).

    Returns:
        Name → a float32 tensor of the layer's weight shape (zeros for a layer that does not
        reach the output).
    """
    sums = {name: torch.zeros_like(m.weight, dtype=torch.float32) for name, m in layers.items()}

    def add(name: str, module: nn.Module, delta: Tensor, m: Tensor) -> None:
        sums[name] += _weight_contribution(module, delta, m)

    _deeplift_pass(scalar_model, inputs, baselines, layers, add)
    return sums


@_with_autograd
def deeplift_scores(model: Detector, batches: Iterable[tuple[Tensor, list[Target], list[dict]]],
                    *, baseline: str = "black", max_batches: int | None = None,
                    device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """DeepLIFT importance of every prunable weight (see the module docstring).

    Args:
        model: the detector; it is left exactly as it was (weights, statistics, mode, device).
        batches: ``(images, targets, records)`` as from :func:`prunekit.data.coco.loader`.
        baseline: ``black``, ``white``, ``grey`` or ``blur``.
        max_batches: use at most this many batches (default: all).
        device: where to compute.

    Returns:
        State-dict name of each weight → float32 CPU scores of its shape: the mean over the
        scored batches of |contribution|.
    """
    check_baseline(baseline)
    if max_batches is not None and max_batches < 1:
        raise PrunekitError(f"--max-batches must be at least 1, got {max_batches}")
    device = torch.device(device)
    work = model
    if any(p.device.type != device.type or (device.index is not None and p.device != device)
           for p in model.parameters()):
        # A copy, so that the caller's model stays where it was.
        work = copy.deepcopy(model).to(device)
    wanted = set(work.prunable())
    layers = {n: m for n, m in prunable_layers(work).items() if n in wanted}
    evidence = DetectionEvidence(work)
    totals = {name: torch.zeros_like(m.weight, dtype=torch.float32)
              for name, m in layers.items()}
    scored = seen = 0
    modes = {m: m.training for m in work.modules()}
    try:
        work.eval()
        for images, targets, records in batches:
            seen += 1
            images = images.to(device=device, dtype=torch.float32)
            if not any(len(t.labels) for t in targets):
                from prunekit.attack import self_targets

                targets = self_targets(work, images, [r["geometry"] for r in records],
                                       conf=SELF_TARGET_CONF)
            if any(len(t.labels) for t in targets):
                batch = {name: torch.zeros_like(t) for name, t in totals.items()}
                # Contributions are sums over images, so chunks add up to the whole batch.
                size = CPU_CHUNK if images.device.type == "cpu" else len(images)
                for part, part_targets in _chunks(images, targets, size):
                    evidence.set_targets(part_targets)
                    for name, c in contributions(evidence, part, make_baseline(part, baseline),
                                                 layers).items():
                        batch[name] += c
                for name, c in batch.items():
                    totals[name] += c.abs()
                scored += 1
            if max_batches is not None and seen >= max_batches:
                break
    finally:
        for m, training in modes.items():
            m.training = training
    if not scored:
        raise PrunekitError(f"DeepLIFT found nothing to attribute in {seen} batch(es): they "
                            f"have no labelled objects and the model detects none at "
                            f"confidence {SELF_TARGET_CONF}; score with a labelled dataset")
    return {name: (t / scored).cpu() for name, t in totals.items()}


def _chunks(images: Tensor, targets: list[Target], size: int) \
        -> Iterator[tuple[Tensor, list[Target]]]:
    """The batch in chunks of ``size`` images with their targets, leaving out a chunk without
    any object (its evidence is zero, and so are its contributions)."""
    for start in range(0, len(images), size):
        part = targets[start:start + size]
        if any(len(t.labels) for t in part):
            yield images[start:start + size], part


@contextmanager
def separate_nonlinearities(model: nn.Module) -> Iterator[Callable[[Tensor], None]]:
    """While inside, no nonlinearity Captum rewrites shares its input tensor with a hooked
    output.

    Captum 0.9 captures a nonlinearity's output gradient with a hook on its output tensor and
    rewrites its input gradient with a hook on its input tensor. When one nonlinearity feeds
    another directly (YOLOv3-tiny's LeakyReLU → MaxPool2d), both hooks sit on the same tensor
    and the first one sees the plain gradient, not the second one's multiplier, which breaks
    summation-to-delta for every layer upstream (captum#1104, fixed after 0.9). A nonlinearity
    whose input is such an output gets a clone instead, before Captum's own pre-hooks run, so
    the two hooks sit on different tensors. Yields ``mark(tensor)``, to protect other hooked
    tensors the same way (a conv output hooked to read its multiplier).
    """
    marked: dict[int, Tensor] = {}  # id → tensor, kept so that ids stay unique in the pass

    def mark(t: Tensor) -> None:
        marked[id(t)] = t

    def is_marked(a: object) -> bool:
        return isinstance(a, Tensor) and marked.get(id(a)) is a

    def clone_marked(module: nn.Module, args: tuple) -> tuple | None:
        if not any(is_marked(a) for a in args):
            return None  # only clone where needed: every copy costs time on 2N activations
        return tuple(a.clone() if is_marked(a) else a for a in args)

    def mark_output(module: nn.Module, args: tuple, out: object) -> None:
        if isinstance(out, Tensor):
            mark(out)

    handles = []
    for m in model.modules():
        if type(m) in NONLINEAR:
            handles.append(m.register_forward_pre_hook(clone_marked))
            handles.append(m.register_forward_hook(mark_output))
    try:
        yield mark
    finally:
        for h in handles:
            h.remove()
        marked.clear()


def _weight_contribution(module: nn.Module, delta: Tensor, m: Tensor) -> Tensor:
    """W · Σ m · Δa over the batch and the positions each weight touches."""
    weight = module.weight.detach()
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            g = m.reshape(-1, m.shape[-1]).T.float() @ delta.reshape(-1, delta.shape[-1]).float()
        elif module.kernel_size == (1, 1) and module.stride == (1, 1) and module.groups == 1 \
                and module.padding in ((0, 0), "valid"):
            # A pointwise conv is a matmul per image; a batched matmul beats the generic
            # weight-gradient kernel 2-4x here, and half of YOLOv3's convs are 1×1.
            g = torch.bmm(m.flatten(2), delta.flatten(2).transpose(1, 2)).sum(0)
            g = g.view(weight.shape)
        elif module.padding_mode == "zeros" and not isinstance(module.padding, str):
            g = conv2d_weight(delta, weight.shape, m, module.stride, module.padding,
                              module.dilation, module.groups)
        else:
            # Other paddings are linear too; let autograd apply them (rare, so slow is fine).
            with torch.enable_grad():
                w = weight.clone().requires_grad_()
                (g,) = torch.autograd.grad(module._conv_forward(delta, w, None), w, m)
    return (weight * g).float()


def _deeplift_pass(scalar_model: nn.Module, inputs: Tensor, baselines: Tensor,
                   layers: Mapping[str, nn.Module], visit: Visit) -> None:
    """One Captum DeepLIFT pass that calls ``visit(name, layer, Δa, m)`` for every use of
    every layer that reaches the output."""
    if baselines.shape != inputs.shape:
        raise PrunekitError(f"baselines of shape {tuple(baselines.shape)} for inputs of shape "
                            f"{tuple(inputs.shape)}; they must match")
    n = inputs.shape[0]

    def forward_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            # A reference, not a copy: the conv's own backward usually keeps it alive anyway.
            a = args[0].detach()
            if a.shape[0] != 2 * n or not out.requires_grad:
                return

            def grad_hook(grad: Tensor) -> None:
                with torch.no_grad():
                    visit(name, module, a[:n] - a[n:], grad[:n])

            out.register_hook(grad_hook)
            # If ``out`` feeds a nonlinearity directly, Captum hooks it too, after us, and we
            # would read the plain gradient; marking makes that nonlinearity take a clone
            # (the effect of returning ``out.clone()`` here, without copying every output).
            mark(out)
        return hook

    modes = {m: m.training for m in scalar_model.modules()}
    handles = []
    try:
        scalar_model.eval()  # Captum's rules assume it; and BN statistics must not move
        with separate_nonlinearities(scalar_model) as mark, warnings.catch_warnings():
            for name, m in layers.items():
                handles.append(m.register_forward_hook(forward_hook(name)))
            warnings.filterwarnings("ignore", message=r"\s*Setting forward, backward hooks")
            x = inputs.detach().clone().requires_grad_()
            DeepLift(scalar_model, multiply_by_inputs=False).attribute(
                x, baselines=baselines.detach().clone().to(x.dtype), target=0)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
            # Captum parks 2N activations on a nonlinearity until its backward hook runs;
            # after an error (or off the gradient path) they would stay.
            if type(m) in NONLINEAR:
                for attr in ("input", "output"):
                    m.__dict__.pop(attr, None)
