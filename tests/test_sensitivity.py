"""sensitivity: each group's mAP is what mask → detect → evaluate give; coupled groups go as
one; costs are bench's; resumed runs measure only what is missing; a budget gets the ratios."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from prunekit import checkpoint
from prunekit import sensitivity as sens
from prunekit.bench import bench
from prunekit.budget import Costs, Curve, allocate, allocate_latency, ceiling
from prunekit.cli import app
from prunekit.errors import PrunekitError
from prunekit.init import init
from prunekit.mask import PruneConfig, compact_checkpoint, make_masks, mask
from prunekit.score import score


@pytest.fixture(scope="module")
def models(tmp_path_factory, synth_data):
    """Scored tiny models of both families, saved: (path, checkpoint) by family."""
    names = [c["name"] for c in json.loads((synth_data / "val.json").read_text())["categories"]]
    root = tmp_path_factory.mktemp("sensitivity-models")
    out = {}
    for family, member in (("yolov3", "yolov3-small"), ("deformable-detr",
                                                        "deformable-detr-small")):
        options = {"width": 0.125} if family == "yolov3" else {}
        ck = score(init(member, names=names, img_size=64, seed=0, options=options), "magnitude")
        path = root / f"{family}.st"
        checkpoint.save(ck, path)
        out[family] = (path, checkpoint.load(path))
    return out


def _shortcut_group(ck) -> str:
    """A YOLOv3 channel group of convs joined by residual additions."""
    from prunekit.mask import Units

    units = Units(ck.skeleton(), "filter")
    return next(label for label, s in zip(units.labels, units.sets, strict=True) if len(s) > 2)


def _cli_map(runner, pruned_path, val, tmp_path, *attack: str) -> dict:
    dets = tmp_path / "dets.csv"
    metrics = tmp_path / "metrics.json"
    done = runner.invoke(app, ["detect", str(pruned_path), "--data", str(val), "--conf",
                               "0.001", "--device", "cpu", *attack, "-o", str(dets)])
    assert done.exit_code == 0, done.stderr
    done = runner.invoke(app, ["evaluate", str(dets), "--gt", str(val), "-o", str(metrics)])
    assert done.exit_code == 0, done.stderr
    return json.loads(metrics.read_text())


def _own_labels(runner, path, synth_data, tmp_path) -> object:
    """The validation set labelled with the unpruned model's own best three detections per
    image, so that its mAP is high and pruning a group visibly costs some (an untrained model
    scores 0 on the real labels, where any equality would hold vacuously)."""
    val = synth_data / "val.json"
    dets = tmp_path / "own.csv"
    done = runner.invoke(app, ["detect", str(path), "--data", str(val), "--conf", "0.001",
                               "--device", "cpu", "-o", str(dets)])
    assert done.exit_code == 0, done.stderr
    gt = json.loads(val.read_text())
    best = pd.read_csv(dets).sort_values("score", ascending=False).groupby("image_id").head(3)
    gt["annotations"] = [{"id": i + 1, "image_id": int(r.image_id),
                          "category_id": int(r.category_id), "bbox": [r.x, r.y, r.w, r.h],
                          "area": r.w * r.h, "iscrowd": 0}
                         for i, r in enumerate(best.itertuples())]
    out = synth_data / f"own-{path.stem}.json"  # beside the images, which it names
    out.write_text(json.dumps(gt))
    return out


# (family, granularity, a group's name or what its name holds, attack options)
CASES = [("yolov3", "filter", "shortcut", ("--adv", "fgsm")),
         ("yolov3", "weight", "conv", ()),
         ("deformable-detr", "filter", "encoder.layers.0.mlp", ()),
         ("deformable-detr", "weight", "decoder.layers.0.mlp.fc1", ())]


@pytest.mark.parametrize(("family", "granularity", "group", "adv"), CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_reported_map_equals_mask_detect_evaluate(runner, models, synth_data, tmp_path, family,
                                                  granularity, group, adv):
    path, ck = models[family]
    group = _shortcut_group(ck) if group == "shortcut" else \
        [g for g in sens.labels(ck, granularity) if group in g][2 if group == "conv" else 0]
    val = _own_labels(runner, path, synth_data, tmp_path)
    out = tmp_path / "sens.csv"
    done = runner.invoke(app, ["sensitivity", str(path), "--data", str(val), "--granularity",
                               granularity, "--group", group, "--ratios", "0.3,0.7", *adv,
                               "-o", str(out)])
    assert done.exit_code == 0, done.stderr
    frame = pd.read_csv(out)
    assert list(frame["group"]) == [sens.UNPRUNED, group, group]
    assert (out.with_suffix(".png")).stat().st_size > 1000
    for _, row in frame.iterrows():
        ratios = {} if row["group"] == sens.UNPRUNED else {group: row["ratio"]}
        pruned = mask(ck, PruneConfig(0.0, granularity, ratios=ratios))
        pruned_path = tmp_path / "pruned.st"
        checkpoint.save(pruned, pruned_path)
        want = _cli_map(runner, pruned_path, val, tmp_path)
        for key in ("map", "map50", "map75"):
            assert abs(row[key] - want[key]) <= 1e-6, (row["group"], row["ratio"], key)
        if adv:
            attacked = _cli_map(runner, pruned_path, val, tmp_path, "--attack", adv[1])
            assert abs(row["adv_map"] - attacked["map"]) <= 1e-6
        if row["group"] != sens.UNPRUNED:  # the costs are bench's on the model `mask` made
            measured = bench(compact_checkpoint(pruned) if granularity == "filter" else pruned,
                             latency=False)
            unpruned = bench(ck, latency=False)
            key = ("params_total", "macs") if granularity == "filter" else \
                ("params_nonzero", "macs_nonzero")
            assert row["params_removed"] == unpruned[key[0]] - measured[key[0]] > 0
            assert row["macs_removed"] == unpruned[key[1]] - measured[key[1]] > 0
    # Not 0: the unpruned model finds its own labels (YOLOv3 most of them; untrained Deformable
    # DETR's duplicate low-score queries keep it near 0.08), so the equalities above hold values.
    assert frame["map"].iloc[0] > 0.05
    pruned_map = frame.loc[frame["group"] == group, "map"]
    assert pruned_map.nunique() > 1 or pruned_map.iloc[0] != frame["map"].iloc[0]


def test_a_residual_group_is_pruned_as_one(models):
    """YOLOv3's shortcut layers add their operands channel by channel: pruning the group removes
    the same channels from every member conv (and its BatchNorm), and from every conv reading
    them, so the removed channels are really gone (exactly zero)."""
    _, ck = models["yolov3"]
    group = _shortcut_group(ck)
    found = next(g for g in ck.skeleton().channel_groups() if g.name == group)
    masks = make_masks(ck, 0.0, granularity="filter", ratios={group: 0.5})
    convs = [s.name for s in found.producers if s.name.endswith("conv.weight")]
    assert len(convs) >= 3 and tuple(convs) == found.scored
    gone = [tuple((~masks[n].flatten(1).any(1)).nonzero().flatten().tolist()) for n in convs]
    assert len(set(gone)) == 1 and len(gone[0]) == round(0.5 * found.size)
    pruned = mask(ck, PruneConfig(0.0, "filter", ratios={group: 0.5}))
    for s in found.producers:  # conv filters, BatchNorm scale and shift: all zero
        assert (pruned.state[s.name].index_select(s.dim, torch.tensor(gone[0])) == 0).all()
    untouched = [n for n in masks if n not in {s.name for s in found.producers}]
    assert all(masks[n].all() for n in untouched)  # nothing else is pruned
    compacted = compact_checkpoint(pruned)
    for s in found.consumers:  # and every reader loses those input channels
        assert compacted.state[s.name].shape[1] == ck.state[s.name].shape[1] - len(gone[0])


def test_a_concatenated_group_loses_its_columns_at_their_offset(models):
    """A route concatenates groups side by side: pruning one of them removes its columns from
    the conv reading the concatenation, at that group's offset, and nothing else."""
    _, ck = models["yolov3"]
    groups = ck.skeleton().channel_groups()
    found = next(g for g in groups if g.prunable and any(c.offset > 0 for c in g.consumers))
    reader = next(c for c in found.consumers if c.offset > 0)
    pruned = mask(ck, PruneConfig(0.0, "filter", ratios={found.name: 0.5}))
    costs = Costs(ck, "filter")
    removed = costs.removed(found.name, 0.5)
    compacted = compact_checkpoint(pruned)
    lost = ck.state[reader.name].shape[1] - compacted.state[reader.name].shape[1]
    assert lost == round(0.5 * found.size)
    assert bench(ck, latency=False)["params_total"] - \
        bench(compacted, latency=False)["params_total"] == removed.params


@pytest.mark.parametrize("family", ["yolov3", "deformable-detr"])
@pytest.mark.parametrize("granularity", ["filter", "weight"])
def test_costs_of_an_allocation_are_bench_counts(models, family, granularity):
    """Several groups at once (filter groups interact: a conv between two loses out × in)."""
    _, ck = models[family]
    costs = Costs(ck, granularity)
    g = torch.Generator().manual_seed(1)
    pick = torch.randperm(len(costs.labels), generator=g)[:max(3, len(costs.labels) // 2)]
    ratios = {costs.labels[i]: [0.2, 0.5, 0.8][k % 3] for k, i in enumerate(pick.tolist())}
    pruned = mask(ck, PruneConfig(0.0, granularity, ratios=ratios))
    if granularity == "filter":
        got = bench(compact_checkpoint(pruned), latency=False)
        want = (got["params_total"], got["macs"])
    else:
        got = bench(pruned, latency=False)
        want = (got["params_nonzero"], got["macs_nonzero"])
    cost = costs.of(ratios)
    assert (cost.params, cost.macs) == want
    base = bench(ck, latency=False)
    assert costs.base.macs == (base["macs"] if granularity == "filter" else base["macs_nonzero"])


def test_per_set_ratios_equal_the_uniform_ratio(models):
    _, ck = models["yolov3"]
    costs = Costs(ck, "filter")
    uniform = make_masks(ck, 0.4, granularity="filter")
    per_set = make_masks(ck, 0.0, granularity="filter", ratios=dict.fromkeys(costs.labels, 0.4))
    assert uniform.keys() == per_set.keys()
    assert all(torch.equal(uniform[n], per_set[n]) for n in uniform)
    with pytest.raises(PrunekitError, match="is not a prunable channel group"):
        make_masks(ck, 0.0, granularity="filter", ratios={"conv 999": 0.5})
    with pytest.raises(PrunekitError, match="needs --scope layer"):
        make_masks(ck, 0.0, granularity="filter", scope="global", ratios={costs.labels[0]: 0.5})


# ------------------------------------------------------------------------------- resuming


def test_a_resumed_run_measures_only_the_missing_groups(runner, models, synth_data, tmp_path,
                                                         monkeypatch):
    path, ck = models["yolov3"]
    val = str(synth_data / "val.json")
    out = tmp_path / "sens.csv"
    labels = sens.labels(ck, "weight")
    args = ["sensitivity", str(path), "--data", val, "--ratios", "0.5", "--max-images", "4",
            "-o", str(out)]
    done = runner.invoke(app, [*args, "--group", labels[0]])
    assert done.exit_code == 0, done.stderr
    first = pd.read_csv(out)
    measured: list = []
    original = sens._Measurer.group
    monkeypatch.setattr(sens._Measurer, "group",
                        lambda self, label: measured.append(label) or original(self, label))
    done = runner.invoke(app, [*args, "--group", labels[0], "--group", labels[1]])
    assert done.exit_code == 0, done.stderr
    assert measured == [labels[1]]  # neither the unpruned model nor the first group again
    second = pd.read_csv(out)
    assert list(second["group"]) == [sens.UNPRUNED, labels[0], labels[1]]
    pd.testing.assert_frame_equal(second.iloc[:2], first)
    assert (second["images"] == 4).all() and second["model"].nunique() == 1
    # other settings, or another model, are refused, and the file is left as it was
    before = out.read_bytes()
    for extra, fragment in ((["--ratios", "0.4"], "holds group"),
                            (["--max-images", "3"], "was measured with another images"),
                            (["--iou", "0.3"], "was measured with another detection"),
                            (["--conf", "0.5"], "was measured with another detection")):
        done = runner.invoke(app, [*args, "--group", labels[2], *extra])
        assert done.exit_code == 1 and fragment in done.stderr, done.stderr
    other = tmp_path / "other.st"
    checkpoint.save(score(init("yolov3-small", names=ck.classes, img_size=64,
                               options={"width": 0.125}, seed=1), "magnitude"), other)
    done = runner.invoke(app, ["sensitivity", str(other), *args[2:]])
    assert done.exit_code == 1 and "was measured with another model" in done.stderr
    assert out.read_bytes() == before


@pytest.mark.slow
def test_jobs_give_the_same_table(runner, models, synth_data, tmp_path):
    path, ck = models["yolov3"]
    tables = []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}.csv"
        done = runner.invoke(app, ["sensitivity", str(path), "--data",
                                   str(synth_data / "val.json"), "--structured", "--ratios",
                                   "0.5", "--jobs", str(jobs), "--threads", "2", "-o", str(out),
                                   *sum((["--group", g] for g in sens.labels(ck, "filter")[:4]),
                                        [])])
        assert done.exit_code == 0, done.stderr
        tables.append(out.read_bytes())
    assert tables[0] == tables[1]


def test_the_csv_is_refused_on_another_model_and_when_it_is_not_one(models, tmp_path):
    _, y = models["yolov3"]
    _, d = models["deformable-detr"]
    assert sens.fingerprint(y) != sens.fingerprint(d)
    assert sens.fingerprint(y) == sens.fingerprint(checkpoint.from_bytes(checkpoint.to_bytes(y)))
    csv = tmp_path / "sens.csv"
    _fake_table(y, "weight", csv)
    with pytest.raises(PrunekitError, match="was measured on another model"):
        sens.ratios_for_budget(d, csv, target="macs", value=0.5)
    other = tmp_path / "dets.csv"
    other.write_text("image_id,file_name,category_id,score\n1,a.png,1,0.5\n")
    with pytest.raises(PrunekitError, match="is not a sensitivity CSV"):
        sens.read(other)


def test_a_csv_of_an_earlier_version_without_its_detection_settings(models, tmp_path):
    """Read (a budget can use it) but not resumed: its mAP's detection settings are unknown."""
    _, y = models["yolov3"]
    csv = _fake_table(y, "weight", tmp_path / "sens.csv")
    pd.read_csv(csv).drop(columns="detection").to_csv(csv, index=False)
    frame = sens.read(csv)
    assert (frame["detection"] == "").all()
    sens.ratios_for_budget(y, csv, target="macs", value=0.5)
    gt = {"images": [], "annotations": [], "categories": []}
    with pytest.raises(PrunekitError, match="does not say which detection settings"):
        sens.check_resumable(frame, csv, sens.settings(y, gt, sens.SensitivityConfig()),
                             (0.3, 0.6, 0.9))


# ------------------------------------------------------------------------------ allocation


def _fake_table(ck, granularity: str, path, *, ratios=(0.3, 0.6, 0.9), loss=None):
    """A sensitivity CSV of ``ck`` with made-up curves: group k loses ``loss(k, r)``."""
    loss = loss or (lambda k, r: 0.01 * (k % 5 + 1) * r)
    labels = sens.labels(ck, granularity)
    rows = [{"group": sens.UNPRUNED, "members": "", "ratio": 0.0, "params_removed": 0,
             "macs_removed": 0, "map": 0.5, "map50": 0.7, "map75": 0.5}]
    rows += [{"group": g, "members": g, "ratio": r, "params_removed": 0, "macs_removed": 0,
              "map": 0.5 - loss(k, r), "map50": 0.7, "map75": 0.5}
             for k, g in enumerate(labels) for r in ratios]
    gt = {"images": [], "annotations": [], "categories": []}
    setting = sens.settings(ck, gt, sens.SensitivityConfig(granularity=granularity))
    sens.write(sens.table(rows, labels, setting), path)
    return path


def test_greedy_allocation_is_optimal_on_a_small_case(models):
    """Three groups, three ratios each: the greedy's predicted loss equals the best of all 64
    allocations that meet the budget, at several budgets."""
    import itertools

    _, ck = models["yolov3"]
    costs = Costs(ck, "weight")
    chosen = sorted(costs.labels, key=lambda n: ck.state[n].numel())[-3:]  # the largest
    shape = {chosen[0]: (0.02, 0.03, 0.30), chosen[1]: (0.001, 0.002, 0.004),
             chosen[2]: (0.05, 0.06, 0.07)}
    curves = {g: Curve((0.3, 0.6, 0.9), tuple(0.5 - v for v in shape[g])) for g in chosen}
    for fraction in (0.9, 0.8, 0.75):
        alloc = allocate(costs, curves, 0.5, target="params", fraction=fraction)
        assert alloc.cost.params <= fraction * costs.base.params
        assert alloc.cost == costs.of(alloc.ratios)
        best = min(sum(curves[g].loss(0.5, r) for g, r in zip(chosen, combo, strict=True))
                   for combo in itertools.product((0.0, 0.3, 0.6, 0.9), repeat=3)
                   if costs.of(dict(zip(chosen, combo, strict=True))).params
                   <= fraction * costs.base.params)
        assert alloc.predicted_loss == pytest.approx(best, abs=1e-12), fraction


def test_an_unreachable_budget_is_refused(models):
    _, ck = models["yolov3"]
    costs = Costs(ck, "filter")
    curves = {g: Curve((0.5,), (0.4,)) for g in costs.labels}
    with pytest.raises(PrunekitError, match="is below what the measured ratios reach"):
        allocate(costs, curves, 0.5, target="macs", fraction=0.01)
    with pytest.raises(PrunekitError, match=r"must lie in \(0, 1\]"):
        allocate(costs, curves, 0.5, target="macs", fraction=0)


def test_a_ceiling_allocates_as_if_only_the_ratios_under_it_were_measured(models):
    """``max_ratio`` is the same allocation as curves cut at it, no group goes beyond it, and
    the ceiling the schedule study uses is the next measured ratio above the uniform one."""
    _, ck = models["yolov3"]
    costs = Costs(ck, "filter")
    # the deep groups are free alone, the early ones are not: unbounded, the greedy takes the
    # free ones to the top
    curves = {g: Curve((0.2, 0.4, 0.6, 0.8), (0.5, 0.5, 0.5, 0.5) if k >= len(costs.labels) // 2
                       else (0.45, 0.4, 0.3, 0.2)) for k, g in enumerate(costs.labels)}
    free = allocate(costs, curves, 0.5, target="macs", fraction=0.4)
    assert max(free.ratios.values()) == 0.8
    capped = allocate(costs, curves, 0.5, target="macs", fraction=0.4, max_ratio=0.6)
    cut = {g: Curve(c.ratios[:3], c.values[:3]) for g, c in curves.items()}
    assert capped.ratios == allocate(costs, cut, 0.5, target="macs", fraction=0.4).ratios
    assert max(capped.ratios.values()) == 0.6 and capped.cost.macs <= 0.4 * costs.base.macs
    assert capped.record()["max_ratio"] == 0.6 and "max_ratio" not in free.record()
    with pytest.raises(PrunekitError, match="up to --max-ratio 0.3 .*raise --max-ratio"):
        allocate(costs, curves, 0.5, target="macs", fraction=0.1, max_ratio=0.3)
    with pytest.raises(PrunekitError, match=r"--max-ratio must lie in \(0, 1\)"):
        allocate(costs, curves, 0.5, target="macs", fraction=0.4, max_ratio=1.0)
    assert [ceiling(curves, r) for r in (0.1, 0.4, 0.5, 0.7, 0.9)] == [0.2, 0.6, 0.6, 0.8, 0.8]


def test_latency_budget_by_bisection(models):
    """With a stand-in clock proportional to MACs, the largest MACs fraction that meets the
    latency is found, and every trial is recorded."""
    _, ck = models["yolov3"]
    costs = Costs(ck, "filter")
    curves = {g: Curve((0.25, 0.5, 0.75), (0.45, 0.4, 0.3)) for g in costs.labels}
    per_mac = 10.0 / costs.base.macs  # the unpruned model takes 10 ms

    def clock(pruned) -> float:
        return bench(pruned, latency=False)["macs"] * per_mac

    alloc = allocate_latency(costs, curves, 0.5, target_ms=7.0, time=clock)
    assert alloc.target == "latency" and len(alloc.timings) >= 4
    assert alloc.cost.macs * per_mac <= 7.0
    meeting = [f for f, ms in alloc.timings if ms <= 7.0]
    assert alloc.cost.macs == allocate(costs, curves, 0.5, target="macs",
                                       fraction=max(meeting)).cost.macs
    with pytest.raises(PrunekitError, match="needs filter groups"):
        allocate_latency(Costs(ck, "weight"), {}, 0.5, target_ms=7.0, time=clock)


@pytest.mark.parametrize(("granularity", "target", "key"), [
    ("filter", "--target-macs", "macs"), ("weight", "--target-params", "params_nonzero")])
def test_mask_ratios_from_meets_the_budget(runner, models, tmp_path, granularity, target, key):
    path, ck = models["yolov3"]
    csv = _fake_table(ck, granularity, tmp_path / "sens.csv")
    out = tmp_path / "pruned.st"
    done = runner.invoke(app, ["mask", str(path), "--ratios-from", str(csv), target, "0.6",
                               "--compact", "-o", str(out)])
    assert done.exit_code == 0, done.stderr
    assert "ratios for " + target in done.stderr and "predicted map loss" in done.stderr
    pruned = checkpoint.load(out)
    got, base = bench(pruned, latency=False), bench(ck, latency=False)
    assert got[key] <= 0.6 * base[key]
    allocated = next(h for h in pruned.history if h["command"] == "allocate")["args"]
    masked = next(h for h in pruned.history if h["command"] == "mask")["args"]
    assert masked["prune"]["ratios"] == allocated["ratios"] and allocated["ratios"]
    assert allocated["limit"] == pytest.approx(0.6 * (base["macs"] if key == "macs"
                                                      else base["params_nonzero"]))
    assert allocated[key.split("_")[0]] == got[key]
    # the most sensitive groups (loss 0.05·r) are pruned least on average
    ratios = allocated["ratios"]
    labels = sens.labels(ck, granularity)
    mean = [sum(ratios.get(g, 0) for k, g in enumerate(labels) if k % 5 == m) /
            sum(1 for k in range(len(labels)) if k % 5 == m) for m in range(5)]
    assert mean[4] < mean[0]


def test_mask_max_ratio_bounds_every_group(runner, models, tmp_path):
    path, ck = models["yolov3"]
    csv = _fake_table(ck, "filter", tmp_path / "sens.csv")  # ratios 0.3, 0.6, 0.9
    out = tmp_path / "pruned.st"
    done = runner.invoke(app, ["mask", str(path), "--ratios-from", str(csv), "--target-macs",
                               "0.6", "--max-ratio", "0.6", "-o", str(out)])
    assert done.exit_code == 0, done.stderr
    assert "none beyond 0.6" in done.stderr
    allocated = next(h for h in checkpoint.load(out).history
                     if h["command"] == "allocate")["args"]
    assert allocated["max_ratio"] == 0.6 and max(allocated["ratios"].values()) <= 0.6
