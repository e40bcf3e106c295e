"""Gradual pruning's schedule and pruner (prunekit.schedule): the sparsity at every update is
Zhu & Gupta's formula, masks only shrink, and removed units stay removed."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import PrunekitError
from prunekit.mask import Units, unit_scores
from prunekit.schedule import Pruner, Schedule
from tests.conftest import tiny_checkpoint


def test_cubic_sparsity_is_zhu_and_gupta() -> None:
    s = Schedule(0.9, "cubic", start=10, end=110, every=20)
    assert s.updates() == [10, 30, 50, 70, 90, 110]
    for t in s.updates():
        expected = 0.9 + (0.0 - 0.9) * (1 - (t - 10) / 100) ** 3
        assert s.sparsity(t) == pytest.approx(expected, abs=1e-15)
        assert s.sparsity(t + 19) == s.sparsity(t)  # held until the next update
    assert s.sparsity(9) == 0 and s.sparsity(10) == 0 and s.sparsity(110) == 0.9
    assert s.sparsity(10_000) == 0.9
    # From a checkpoint already 20 % sparse.
    s = Schedule(0.75, "cubic", start=0, end=30, every=10, initial=0.2)
    assert [round(s.sparsity(t), 12) for t in s.updates()] == [
        0.2, round(0.75 - 0.55 * (2 / 3) ** 3, 12), round(0.75 - 0.55 * (1 / 3) ** 3, 12), 0.75]


def test_linear_and_one_shot() -> None:
    assert [Schedule(0.6, "linear", 0, 30, 10).sparsity(t) for t in (0, 10, 20, 30)] == \
        pytest.approx([0.0, 0.2, 0.4, 0.6])
    one = Schedule(0.6, "one-shot", start=5, end=50, every=10)
    assert one.updates() == [5] and one.sparsity(4) == 0 and one.sparsity(5) == 0.6
    # An end that is not start + k·every is the last update.
    assert Schedule(0.5, "cubic", 0, 25, 10).updates() == [0, 10, 20, 25]


@pytest.mark.parametrize("bad, message", [
    (Schedule(1.2), r"--prune-to must lie in \(0, 1\)"),
    (Schedule(0.0), r"--prune-to must lie in \(0, 1\)"),
    (Schedule(0.5, start=50, end=10), r"--prune-end \(10\) comes before --prune-start \(50\)"),
    (Schedule(0.5, every=0), r"--prune-every must be at least 1"),
    (Schedule(0.5, "exp"), r"--schedule 'exp' is unknown"),
    (Schedule(0.5, start=0, end=200), r"--prune-end \(200\) is after the last step \(100\)"),
])
def test_bad_schedules_are_refused_in_one_line(bad: Schedule, message: str) -> None:
    with pytest.raises(PrunekitError, match=message):
        bad.check(steps=100)


def _removed(units: Units, masks: dict, granularity: str) -> list[int]:
    per = {n: unit_scores(masks[n].float(), granularity) for n in units.names if n in masks}
    return [int((units.scores(per)[i] == 0).sum()) for i in range(len(units.sets))]


@pytest.mark.parametrize("granularity, method", [("weight", "magnitude"),
                                                 ("filter", "l1-filter"),
                                                 ("weight", "taylor")])
def test_masks_follow_the_schedule_and_only_shrink(granularity: str, method: str) -> None:
    model = tiny_checkpoint().build()
    schedule = Schedule(0.8, "cubic", start=0, end=40, every=10).check(steps=40)
    pruner = Pruner(model, schedule, granularity=granularity, method=method)
    units = Units(model, granularity)
    masks: dict = {}
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=gen)
    for step in range(41):
        if pruner.due(step):
            new = pruner.update(model, step, masks)
            for n, m in masks.items():  # a unit once removed stays removed
                assert not (new[n] & ~m).any(), n
            masks = new
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in masks:
                        p.masked_fill_(~masks[n], 0.0)
            ratio = schedule.sparsity(step)
            expected = [min(round(ratio * u.numel()), u.numel() - 1)
                        for u in units.scores({n: unit_scores(p.detach(), granularity)
                                               for n, p in model.named_parameters()
                                               if n in units.names})]
            assert _removed(units, masks, granularity) == expected, step
        # A training step: weights move (pruned ones are re-zeroed by the loop, here by hand).
        model.zero_grad()
        sum(o.float().square().mean() for o in model(x)).backward()
        pruner.observe(model)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 1e-3)
                if n in masks:
                    p.masked_fill_(~masks[n], 0.0)
    assert schedule.sparsity(40) == 0.8


def test_static_methods_need_the_checkpoints_scores() -> None:
    model = tiny_checkpoint().build()
    with pytest.raises(PrunekitError, match=r"the checkpoint's hydra scores are needed"):
        Pruner(model, Schedule(0.5), method="hydra")
