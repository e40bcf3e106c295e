"""What a model pruned at per-group ratios costs, and the ratios that meet a budget at the least
predicted loss (``prunekit mask --ratios-from``).

**Costs** (:class:`Costs`) are counted as ``prunekit bench`` counts them, for the model the masks
make:

* weight and kernel pruning: the non-zero parameters and the MACs whose weight is non-zero
  (bench's ``params_nonzero`` and ``macs_nonzero``). An unstructured mask leaves a dense model's
  shape, and its dense MACs, as they were; what it saves is storage and a sparse kernel's work.
* filter pruning: the parameters and MACs of the compacted model (``params_total`` and ``macs``
  after :func:`~prunekit.mask.compact_checkpoint`), what a dense runtime runs.

They are exact without building each model: a conv or linear layer's multiply–accumulates are its
weight's entries times the positions it is applied at (what ``FlopCounterMode`` counts), and
nothing else ``bench`` counts depends on the pruned widths, so a model's MACs are the unpruned
model's (:func:`prunekit.bench.count_macs`) less positions × removed entries of every weight.
Filter groups interact: a conv that makes one group's channels and reads another's loses
``out × in`` entries, not the sum of what each group removes alone, so every tensor's compacted
shape is worked out from all the groups along its dimensions.

**Allocation** (:func:`allocate`) is greedy, over the ratios the sensitivity analysis measured:
the predicted loss of an allocation is the sum over groups of what each group's curve lost at its
ratio (mAP of the unpruned model minus mAP with that group alone pruned; Distiller's and NNI's
assumption that groups' losses add), and each step raises one group to whichever higher measured
ratio costs the fewest predicted mAP points per unit of budget saved, until the budget is met;
then any group whose ratio can go back down without breaking the budget, at a lower predicted
loss, goes back (the last step usually overshoots). Why greedy and not a Lagrangian relaxation:
the relaxation needs costs that add up over groups, and filter pruning's do not (above); the
greedy recomputes the exact cost after every step. Each step looks at every higher ratio, not only
the next one, so a curve that is flat after a first drop is still found cheap. Choices are
measured ratios only: the loss between two measured ratios is a guess, so the allocation never
rests on one.

**A ceiling** (``max_ratio``): no group goes beyond it. The additive prediction rests on groups
measured one at a time, and is worst far from the unpruned model. On the embedded YOLOv3 (the
schedule study's start model, filters at the MACs of uniform 50 %), the unbounded greedy took 23
of its 30 pruned groups to 80 %, the deep layers and heads that cost least alone; after the
study's fine-tune that model kept 0.09 mAP where uniform 50 % kept 0.37. Capped at 60 %, the
next measured ratio above the uniform one, the allocation is uniform 60 % but for the most
sensitive groups (convolutions 1 and 3 left whole, the first convolution and the residual group
of convolutions 9, 11, 14 and 17 at 20 %, two more at 40 %), and it kept 0.385, 0.395 and 0.382
mAP against uniform's 0.393, 0.394 and 0.392, with twice uniform's mAP under PGD (0.108, 0.086,
0.116 against 0.046, 0.050, 0.054; development runs 11–13, stop 34). The schedule study caps
every allocation so (``prunekit grid cell --schedule sensitivity``, :func:`ceiling`).

**Latency** targets (:func:`allocate_latency`) are met by measurement, since latency has no exact
model: the largest MACs budget whose allocation, compacted and timed with ``bench``'s runtime on
the current device, meets the target (bisection over the MACs fraction). Unstructured masks do
not make bench's dense runtimes faster, so a latency target needs filter groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.bench import count_macs
from prunekit.checkpoint import Checkpoint
from prunekit.errors import PrunekitError
from prunekit.mask import Units, check_granularity, make_masks
from prunekit.models.compact import alive

KINDS = ("params", "macs")


@dataclass(frozen=True)
class Cost:
    """Parameters and MACs (per image) of a model, counted as :mod:`prunekit.bench` does."""

    params: int
    macs: int

    def __getitem__(self, kind: str) -> int:
        return getattr(self, kind)


def _positions(model: nn.Module) -> dict[str, int]:
    """Conv and linear weights → how many times one forward pass applies each (positions for
    a conv, tokens for a linear layer), as :func:`prunekit.bench.count_macs` counts them. A
    weight shared by several modules (Deformable DETR's heads) counts every use, under its
    first name, the one :meth:`~torch.nn.Module.named_parameters` and the masks use."""
    found: dict[str, int] = {}
    first = {id(p): n for n, p in model.named_parameters()}
    hooks = []

    def hook(name: str) -> Callable[..., None]:
        def count(mod: nn.Module, _inp: Any, out: Tensor) -> None:
            n = out.shape[0] * out.shape[2] * out.shape[3] if isinstance(mod, nn.Conv2d) \
                else out.numel() // out.shape[-1]
            found[name] = found.get(name, 0) + n
        return count

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            hooks.append(m.register_forward_hook(hook(first.get(id(m.weight),
                                                                 f"{name}.weight"))))
    param = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *model.input_shape, dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
    return found


class Costs:
    """The cost of a checkpoint pruned at a ratio per set of units (:class:`~prunekit.mask.Units`:
    a prunable weight, or a channel group), computed exactly (module docstring).

    A set's *effect* at a ratio is what the masks :func:`~prunekit.mask.make_masks` makes
    remove: non-zero entries of its weight (weight, kernel), or its dead channels (filter:
    channels whose producers are all zero, which compaction removes, those dead before
    included).
    """

    def __init__(self, ck: Checkpoint, granularity: str) -> None:
        check_granularity(granularity, "layer")
        self.ck, self.granularity = ck, granularity
        model = ck.build()
        self.units = Units(model, granularity)
        self.labels: list[str] = list(self.units.labels)
        self.members: list[tuple[str, ...]] = [tuple(s) for s in self.units.sets]
        self._index = {label: i for i, label in enumerate(self.labels)}
        self._positions = _positions(model)
        macs, macs_nonzero, _, _ = count_macs(model)
        self._effects: dict[tuple[int, float], int] = {}
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        if granularity == "filter":
            self._dense_macs = macs
            self._shapes = shapes
            along: dict[str, list[tuple[int, int]]] = {}
            for i, g in enumerate(self.units.groups):
                for s in (*g.producers, *g.consumers):
                    if s.name in shapes:
                        along.setdefault(s.name, []).append((s.dim, i))
            self._along = along
            self._touches = [sorted({s.name for s in (*g.producers, *g.consumers)
                                     if s.name in shapes}) for g in self.units.groups]
        else:
            self._nonzero = sum(int((p != 0).sum()) for p in model.parameters())
            self._macs_nonzero = macs_nonzero
        self.base = self.total(self.vector({}))

    # ------------------------------------------------------------------------------ effects

    def index(self, label: str) -> int:
        if label not in self._index:
            kind = "channel group" if self.granularity == "filter" else "prunable weight"
            raise PrunekitError(f"{label!r} is not a {kind} of {self.ck.name}")
        return self._index[label]

    def effect(self, i: int, ratio: float, masks: Mapping[str, Tensor] | None = None) -> int:
        """Set ``i``'s effect at ``ratio`` (``masks``: those ``make_masks`` made for it alone,
        when the caller has them)."""
        key = (i, float(ratio))
        if key not in self._effects:
            if masks is None:
                masks = make_masks(self.ck, 0.0, granularity=self.granularity,
                                   ratios={self.labels[i]: ratio})
            state = self.ck.state
            if self.granularity == "filter":
                group = self.units.groups[i]
                masked = {s.name: state[s.name].masked_fill(~masks[s.name], 0.0)
                          if s.name in masks else state[s.name] for s in group.producers}
                self._effects[key] = group.size - int(alive(group, masked).sum())
            else:
                name = self.members[i][0]
                self._effects[key] = int(((state[name] != 0) & ~masks[name]).sum())
        return self._effects[key]

    def vector(self, ratios: Mapping[str, float]) -> list[int]:
        """Every set's effect, at ``ratios`` (by label; sets not named at 0)."""
        for label in ratios:
            self.index(label)
        return [self.effect(i, ratios.get(label, 0.0)) for i, label in enumerate(self.labels)]

    # -------------------------------------------------------------------------------- costs

    def total(self, effects: Sequence[int]) -> Cost:
        """The cost of a model whose sets have these effects."""
        if self.granularity != "filter":
            removed = sum(effects)
            macs = sum(self._positions[self.members[i][0]] * e for i, e in enumerate(effects))
            return Cost(self._nonzero - removed, self._macs_nonzero - macs)
        params = sum(self._numel(n, effects) for n in self._shapes)
        lost = sum(self._positions[n] * (math.prod(self._shapes[n]) - self._numel(n, effects))
                   for n in self._along if n in self._positions)
        return Cost(params, self._dense_macs - lost)

    def change(self, effects: Sequence[int], i: int, value: int) -> Cost:
        """How the cost changes when set ``i``'s effect becomes ``value`` (negative: saved)."""
        if self.granularity != "filter":
            d = value - effects[i]
            return Cost(-d, -self._positions[self.members[i][0]] * d)
        new = list(effects)
        new[i] = value
        params = macs = 0
        for n in self._touches[i]:
            d = self._numel(n, new) - self._numel(n, effects)
            params += d
            macs += self._positions.get(n, 0) * d
        return Cost(params, macs)

    def _numel(self, name: str, effects: Sequence[int]) -> int:
        shape = list(self._shapes[name])
        for dim, i in self._along.get(name, ()):
            shape[dim] -= effects[i]
        return math.prod(shape)

    def of(self, ratios: Mapping[str, float]) -> Cost:
        """The cost of the checkpoint pruned at ``ratios`` (by label; sets not named at 0)."""
        return self.total(self.vector(ratios))

    def removed(self, label: str, ratio: float, masks: Mapping[str, Tensor] | None = None) \
            -> Cost:
        """What pruning one set alone at ``ratio`` removes."""
        i = self.index(label)
        effects = self.vector({})
        return _negate(self.change(effects, i, self.effect(i, ratio, masks)))


def _negate(c: Cost) -> Cost:
    return Cost(-c.params, -c.macs)


# ----------------------------------------------------------------------------------- allocation


@dataclass(frozen=True)
class Curve:
    """One group's sensitivity: the metric of the model with that group alone pruned, at each
    measured ratio (ascending), beside the unpruned model's."""

    ratios: tuple[float, ...]
    values: tuple[float, ...]

    def loss(self, base: float, ratio: float) -> float:
        """Predicted loss (``base`` minus the metric) at a measured ratio, or 0."""
        if ratio == 0:
            return 0.0
        return base - self.values[self.ratios.index(ratio)]


@dataclass
class Allocation:
    """Per-group ratios for a budget, and what they are predicted to cost.

    Attributes:
        ratios: group → chosen ratio, for every group the curves cover (0: left whole).
        target: ``params``, ``macs`` or ``latency``.
        limit: the budget (parameters or MACs; milliseconds for latency).
        base: the unpruned model's cost.
        cost: the allocation's cost (exact for parameters and MACs).
        predicted_loss: the sum of the groups' predicted losses of the metric.
        losses: group → its predicted loss.
        unmeasured: groups of the model the curves do not cover (left whole).
        timings: for latency targets, (MACs fraction, measured milliseconds) per trial.
    """

    ratios: dict[str, float]
    target: str
    limit: float
    base: Cost
    cost: Cost
    predicted_loss: float
    losses: dict[str, float]
    unmeasured: list[str] = field(default_factory=list)
    timings: list[tuple[float, float]] = field(default_factory=list)
    max_ratio: float | None = None

    def record(self) -> dict[str, Any]:
        """What the checkpoint's history keeps of it."""
        return {"target": self.target, "limit": self.limit,
                "ratios": {g: r for g, r in self.ratios.items() if r > 0},
                "predicted_loss": self.predicted_loss, "params": self.cost.params,
                "macs": self.cost.macs, "params_base": self.base.params,
                "macs_base": self.base.macs, "unmeasured": self.unmeasured,
                **({"max_ratio": self.max_ratio} if self.max_ratio is not None else {}),
                **({"timings": self.timings} if self.timings else {})}


def check_fraction(fraction: float, what: str) -> None:
    if not 0 < fraction <= 1:
        raise PrunekitError(f"{what} must lie in (0, 1] (a fraction of the unpruned model's), "
                            f"got {fraction}")


def check_max_ratio(max_ratio: float | None) -> None:
    if max_ratio is not None and not 0 < max_ratio < 1:
        raise PrunekitError(f"--max-ratio must lie in (0, 1) (the most any group is pruned), "
                            f"got {max_ratio}")


def ceiling(curves: Mapping[str, Curve], ratio: float) -> float:
    """The smallest ratio the curves measured above ``ratio`` (the schedule study's ceiling
    for an allocation at the cost of uniform ``ratio``: one measured step of room; the highest
    measured when none is higher)."""
    measured = sorted({r for c in curves.values() for r in c.ratios})
    if not measured:
        raise PrunekitError("the sensitivity CSV measured no ratios; run `prunekit "
                            "sensitivity` with --ratios")
    return next((r for r in measured if r > ratio + 1e-9), measured[-1])


def _options(curves: Mapping[str, Curve], label: str, max_ratio: float | None) \
        -> tuple[float, ...]:
    return tuple(r for r in curves[label].ratios
                 if max_ratio is None or r <= max_ratio + 1e-9)


def allocate(costs: Costs, curves: Mapping[str, Curve], base_metric: float, *, target: str,
             fraction: float, max_ratio: float | None = None) -> Allocation:
    """Ratios per group that bring ``target`` (``params`` or ``macs``) to at most ``fraction``
    of the unpruned model's at the least predicted loss (greedy; module docstring).

    Args:
        costs: the checkpoint's costs.
        curves: group label → its sensitivity curve.
        base_metric: the unpruned model's metric.
        target: ``params`` or ``macs``.
        fraction: in (0, 1].
        max_ratio: no group beyond this ratio (None: up to the highest measured).

    Raises:
        PrunekitError: a fraction out of range, or one the measured ratios cannot reach.
    """
    if target not in KINDS:
        raise PrunekitError(f"target {target!r} is unknown; use {', '.join(KINDS)}")
    check_fraction(fraction, f"--target-{target}")
    check_max_ratio(max_ratio)
    limit = fraction * costs.base[target]
    groups = [costs.index(g) for g in curves]
    cur = {i: 0.0 for i in groups}
    effects = costs.vector({})
    total = costs.base[target]
    options = {i: _options(curves, costs.labels[i], max_ratio) for i in groups}
    lowest = costs.total(costs.vector({costs.labels[i]: max(options[i]) for i in groups
                                       if options[i]}))[target]
    if lowest > limit:
        what = "MACs" if target == "macs" else "parameters"
        highest, fix = ("its highest ratio", "measure higher --ratios with `prunekit "
                        "sensitivity`") if max_ratio is None else \
            (f"its highest ratio up to --max-ratio {max_ratio:g}", "raise --max-ratio")
        raise PrunekitError(f"--target-{target} {fraction:g} is below what the measured ratios "
                            f"reach: every group at {highest} keeps {lowest:,} {what}, "
                            f"{lowest / costs.base[target]:.3f} of the unpruned model's; raise "
                            f"the target, or {fix}")

    def loss(i: int, r: float) -> float:
        return curves[costs.labels[i]].loss(base_metric, r)

    while total > limit:  # raise the group whose next ratio costs least per unit saved
        best: tuple[float, float, int, float, int] | None = None
        for i in groups:
            for r in options[i]:
                if r <= cur[i]:
                    continue
                e = costs.effect(i, r)
                saved = -costs.change(effects, i, e)[target]
                if saved <= 0:
                    continue
                key = ((loss(i, r) - loss(i, cur[i])) / saved, -saved, i, r, e)
                if best is None or key < best:
                    best = key
        if best is None:  # cannot happen after the check above; a guard against a loop
            raise PrunekitError(f"--target-{target} {fraction:g} cannot be reached")
        _, saved_neg, i, r, e = best
        total += saved_neg
        effects[i], cur[i] = e, r
    while True:  # give back what the last steps overshot, where it lowers the predicted loss
        best_back: tuple[float, int, float, int, int] | None = None
        for i in groups:
            for r in (0.0, *options[i]):
                if r >= cur[i]:
                    continue
                e = costs.effect(i, r)
                added = costs.change(effects, i, e)[target]
                gain = loss(i, cur[i]) - loss(i, r)
                if total + added <= limit and gain > 0:
                    key = (-gain, i, r, e, added)
                    if best_back is None or key < best_back:
                        best_back = key
        if best_back is None:
            break
        _, i, r, e, added = best_back
        total += added
        effects[i], cur[i] = e, r
    ratios = {costs.labels[i]: cur[i] for i in groups}
    losses = {costs.labels[i]: loss(i, cur[i]) for i in groups}
    unmeasured = [g for g in costs.labels if g not in curves]
    return Allocation(ratios, target, limit, costs.base, costs.total(effects),
                      sum(losses.values()), losses, unmeasured, max_ratio=max_ratio)


def allocate_latency(costs: Costs, curves: Mapping[str, Curve], base_metric: float, *,
                     target_ms: float, time: Callable[[Checkpoint], float],
                     steps: int = 6, max_ratio: float | None = None) -> Allocation:
    """The allocation of the largest MACs fraction whose pruned, compacted model runs within
    ``target_ms`` as ``time`` measures it (bisection over the fraction, ``steps`` halvings).

    Args:
        costs: the checkpoint's costs (filter granularity).
        curves: group label → its sensitivity curve.
        base_metric: the unpruned model's metric.
        target_ms: the latency budget in milliseconds.
        time: a pruned checkpoint → its latency in milliseconds (``bench``'s).
        steps: bisection steps after the two ends.
        max_ratio: no group beyond this ratio (None: up to the highest measured).
    """
    from prunekit.mask import PruneConfig, compact_checkpoint, mask

    if costs.granularity != "filter":
        raise PrunekitError("--target-latency needs filter groups: unstructured masks do not "
                            "make bench's dense runtimes faster; run `prunekit sensitivity "
                            "--granularity filter` first")
    if not target_ms > 0:
        raise PrunekitError(f"--target-latency must be a positive number of milliseconds, got "
                            f"{target_ms}")
    timings: list[tuple[float, float]] = []

    def trial(fraction: float) -> tuple[Allocation, bool]:
        alloc = allocate(costs, curves, base_metric, target="macs", fraction=fraction,
                         max_ratio=max_ratio)
        pruned = mask(costs.ck, PruneConfig(0.0, "filter", ratios=alloc.ratios))
        ms = time(compact_checkpoint(pruned))
        timings.append((fraction, ms))
        return alloc, ms <= target_ms

    check_max_ratio(max_ratio)
    lowest = costs.of({g: max(o) for g in curves if (o := _options(curves, g, max_ratio))}) \
        .macs / costs.base.macs
    best, ok = trial(1.0)
    if not ok:
        best, ok = trial(lowest)
        if not ok:
            fix = "measure higher --ratios with `prunekit sensitivity`" if max_ratio is None \
                else "raise --max-ratio"
            raise PrunekitError(f"--target-latency {target_ms:g} is below what the measured "
                                f"ratios reach: every group at its highest ratio runs in "
                                f"{timings[-1][1]:.3g} ms; raise the target, or {fix}")
        lo, hi = lowest, 1.0
        for _ in range(steps):
            mid = (lo + hi) / 2
            alloc, ok = trial(mid)
            if ok:
                best, lo = alloc, mid
            else:
                hi = mid
    best.target, best.limit, best.timings = "latency", target_ms, timings
    return best
