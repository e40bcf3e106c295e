"""Simulated studies with known truths, to calibrate the verdict rules.

A *world* fixes the true mean of every cell; :func:`simulate` draws results tables from it with
a :class:`Noise` model, in the same columns a grid writes, and :func:`calibrate` judges many of
them with the declared rules and counts the verdicts per finding. Three worlds per study:

* ``seed``: every finding true, with the seed's effect sizes (the first study: the paper's cell
  means, Tables V–XIV, except that greyscale equals colour at 95–99 %, where the paper claims no
  effect; the second: the study's own figures, and, for what it did not measure, effects stated
  in :func:`kitti_world`);
* ``none``: every finding false by the absence of its effect (no method, granularity or colour
  effect, linear curves, no collapse), or, for a claim of no effect, by an effect twice the
  margin;
* ``opposite``: every finding false by the opposite effect.

Where two claims cannot both be false by "no effect" (the paper's finding 5, no latency effect
of the score method, and 8, DeepLIFT slightly faster), the false world makes DeepLIFT 10 %
slower, which falsifies both.

Noise is measured, not assumed: :func:`noise_from` takes the run-to-run spread per ratio from a
results table of this project's own default runs (mAP as a share of the unpruned mAP; latency
and score time on the log scale); without one, the paper's own spread (first study) or the
stated defaults of :class:`Noise` are used, and the report says which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from prunekit.stats.findings import (
    LATENCY_MARGIN,
    MAP_MARGIN,
    VERDICTS,
    judge_all,
)

PAPER_RATIOS = (0.0, 0.25, 0.5, 0.65, 0.75, 0.85, 0.9, 0.95, 0.99)
PAPER_SCENARIOS = {
    "unstructured-deeplift": ("weight", "deeplift", "rgb"),
    "unstructured-hydra": ("weight", "hydra", "rgb"),
    "structured-deeplift": ("filter", "deeplift", "rgb"),
    "structured-hydra": ("filter", "hydra", "rgb"),
    "unstructured-deeplift-grey": ("weight", "deeplift", "grey"),
}
FILTER = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
WEIGHT = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
WORLDS = ("seed", "none", "opposite")

#: The world in which every finding is true; in the others every finding is false.
TRUE_WORLD = "seed"


@dataclass
class Noise:
    """Run-to-run spread per ratio: ``map`` as a share of the unpruned mAP, ``log_latency``
    and ``log_seconds`` as standard deviations of logs (about the coefficient of variation).
    ``source`` says where the numbers come from."""

    map: dict[float, float] = field(default_factory=lambda: {0.0: 0.02})
    log_latency: dict[float, float] = field(default_factory=lambda: {0.0: 0.1})
    log_seconds: dict[float, float] = field(default_factory=lambda: {0.0: 0.1})
    source: str = "stated defaults (mAP 2 % of unpruned, latency and score time 10 %)"

    def at(self, kind: str, ratio: float) -> float:
        table = getattr(self, kind)
        xs = sorted(table)
        return float(np.interp(ratio, xs, [table[x] for x in xs]))


def _pooled_sd(groups: pd.core.groupby.SeriesGroupBy) -> pd.Series:
    """Per ratio, the root mean square of the cells' sample standard deviations."""
    var = groups.var(ddof=1).dropna()
    return var.groupby(level="ratio").mean().pipe(np.sqrt)


def noise_from(df: pd.DataFrame, study: str, source: str = "a results table") -> Noise:
    """The spread of a results table (the project's own default runs, or the paper's)."""
    out = Noise(source=source)
    if study == "kitti":
        from prunekit.stats.findings.kitti import prepare

        df = prepare(df)
        tuned = df[df["state"] == "finetuned"]
        metric = "retained.map"
        keys = ["model", "granularity", "ratio"]
        if metric in tuned and tuned[metric].notna().any():
            out.map = _pooled_sd(tuned.groupby(keys)[metric]).to_dict()
        lat = df[df["latency_ms"] > 0].assign(log=lambda d: np.log(d["latency_ms"]))
        out.log_latency = _pooled_sd(lat.groupby(keys)["log"]).to_dict()
        return out
    metric = "map_conf05" if "map_conf05" in df else "map"
    ref = df[df["ratio"] == 0].groupby("scenario")[metric].mean()
    rel = df.assign(rel=df[metric] / df["scenario"].map(ref))
    out.map = _pooled_sd(rel.groupby(["scenario", "ratio"])["rel"]).to_dict()
    lat = df[df["latency_ms"] > 0].assign(log=lambda d: np.log(d["latency_ms"]))
    out.log_latency = _pooled_sd(lat.groupby(["scenario", "ratio"])["log"]).to_dict()
    if "seconds_score" in df and df["seconds_score"].notna().any():
        sec = df.dropna(subset=["seconds_score"])
        sec = sec.assign(log=np.log(sec["seconds_score"]), ratio=0.0)
        out.log_seconds = {0.0: float(sec.groupby("method")["log"].std().mean())}
    return out


# ------------------------------------------------------------------------------ the paper


def _paper_means() -> tuple[dict, dict]:
    from prunekit.stats.seeds import paper_results

    p = paper_results()
    g = p.groupby(["scenario", "ratio"])
    return g["map_conf05"].mean().to_dict(), g["latency_ms"].mean().to_dict()


def paper_world(world: str) -> dict[str, dict[tuple[str, float], float]]:
    """True cell means of the first study: ``{"map_conf05": …, "latency_ms": …,
    "seconds_score": {(method, 0): …}}``."""
    mp, lat = _paper_means()
    colour = [s for s, a in PAPER_SCENARIOS.items() if a[2] == "rgb"]
    grey, ud = "unstructured-deeplift-grey", "unstructured-deeplift"
    pooled = {r: np.mean([mp[(s, r)] for s in colour]) for r in PAPER_RATIOS}
    ref = pooled[0.0]
    gap = 2 * MAP_MARGIN * ref
    m0, m99 = pooled[0.0], pooled[0.99]
    lat_all = {r: np.mean([lat[(s, r)] for s in PAPER_SCENARIOS]) for r in PAPER_RATIOS}
    l0, l99 = lat_all[0.0], lat_all[0.99]
    high = [0.95, 0.99]
    if world == "seed":
        m = dict(mp)
        for r in high:
            m[(grey, r)] = mp[(ud, r)]
        latency = dict(lat)
        seconds = {"deeplift": 49.0, "hydra": 18.0}
    elif world == "none":
        lin = {r: m0 + (m99 - m0) * r / 0.99 for r in PAPER_RATIOS}
        m = {(s, r): lin[r] - (gap if s == grey and r in high else 0.0)
             for s in PAPER_SCENARIOS for r in PAPER_RATIOS}
        latency = {(s, r): (l0 + (l99 - l0) * r / 0.99)
                   * (1 + 2 * LATENCY_MARGIN if PAPER_SCENARIOS[s][1] == "deeplift" else 1)
                   for s in PAPER_SCENARIOS for r in PAPER_RATIOS}
        seconds = {"deeplift": 30.0, "hydra": 30.0}
    elif world == "opposite":
        concave = {r: m99 + (m0 - m99) * (1 - r / 0.99) ** 2 for r in PAPER_RATIOS}
        m = {(s, r): concave[r] - (mp[(s, r)] - pooled[r]) for s in colour for r in PAPER_RATIOS}
        for r in PAPER_RATIOS:
            m[(grey, r)] = m[(ud, r)] + (gap if r in high else mp[(ud, r)] - mp[(grey, r)])
        inverse_s = {r: l0 + (l99 - l0) * (0.5 + 0.5 * (2 * r / 0.99 - 1) ** 3)
                     for r in PAPER_RATIOS}
        latency = {}
        for s, (g, method, c) in PAPER_SCENARIOS.items():
            for r in PAPER_RATIOS:
                v = inverse_s[r]
                if g == "filter":
                    v *= 1 + 0.5 * min(r, 0.65) / 0.65
                if method == "deeplift":
                    v *= 1 + 2 * LATENCY_MARGIN
                if c == "grey":
                    v *= 1 + LATENCY_MARGIN
                latency[(s, r)] = v
        seconds = {"deeplift": 18.0, "hydra": 49.0}
    else:
        raise ValueError(f"unknown world {world!r}; one of {', '.join(WORLDS)}")
    return {"map_conf05": m, "latency_ms": latency, "seconds_score": seconds}


def simulate_paper(world: dict, runs: int, noise: Noise, rng: np.random.Generator,
                   ) -> pd.DataFrame:
    """One simulated first-study table as the grid writes it (ratio 0 measured once per run
    and copied to the colour scenarios, as `make all-scenarios` does)."""
    rows = []
    sec = world["seconds_score"]
    for k in range(1, runs + 1):
        score_time = {}
        shared = {}
        for s, (g, method, colour) in PAPER_SCENARIOS.items():
            for r in PAPER_RATIOS:
                source = f"run{k}/deeplift-{colour}" if method == "deeplift" else \
                    f"run{k}/hydra-{g}-r{r}"
                if source not in score_time:
                    score_time[source] = sec[method] * math.exp(
                        noise.at("log_seconds", 0.0) * rng.standard_normal())
                key = ("r0", colour) if r == 0 else None
                if key is not None and key in shared:
                    mp, lat = shared[key]
                else:
                    mp = max(0.0, world["map_conf05"][(s, r)] + noise.at("map", r)
                             * world["map_conf05"][(s, 0.0)] * rng.standard_normal())
                    lat = world["latency_ms"][(s, r)] * math.exp(
                        noise.at("log_latency", r) * rng.standard_normal())
                    if key is not None:
                        shared[key] = (mp, lat)
                rows.append({"scenario": s, "run": k, "ratio": r, "granularity": g,
                             "method": method, "colour": colour, "map_conf05": mp,
                             "latency_ms": lat,
                             "seconds_score": score_time[source] if r > 0 else math.nan,
                             "source": source if r > 0 else None})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ the second study


def kitti_world(world: str) -> dict:
    """True curves of the second study: per model, the pruned and fine-tuned retained mAP by
    method, the unpruned mAP, and MACs, latency and bytes as shares of the unpruned ones."""
    detr_ft_y = {"filter": [1, .97, .93, .88, .83, .77],
                 "weight": [1, 1, 1, .99, .98, .96, .93, .88, .8, .65]}
    detr_ft_d = {g: [1] + [v - 0.1 for v in c[1:]] for g, c in detr_ft_y.items()}
    if world == "seed":
        pruned = {"filter": [1, .786, .205, 0, 0, 0],
                  "weight": [1, .99, .97, .92, .86, .7, .45, .2, .05, .01]}
        tuned = detr_ft_d
        cnn = detr_ft_y
        macs = {"filter": [1 - .474 * r for r in FILTER]}
        lat = {"filter": [1 - .072 * r for r in FILTER], "weight": [1.0] * len(WEIGHT)}
        size = [1 - .85 * r for r in WEIGHT]
        scale = 1.0
    elif world == "none":
        pruned = {"filter": [1 - .5 * r for r in FILTER],
                  "weight": [max(0.0, 1 - 1.4 * r) for r in WEIGHT]}
        tuned = cnn = detr_ft_y
        macs = {"filter": [1 - r for r in FILTER]}
        lat = {"filter": [1 - .9 * r for r in FILTER], "weight": [1 - .5 * r for r in WEIGHT]}
        size = [1.0] * len(WEIGHT)
        scale = 2.0
    elif world == "opposite":
        pruned = {"filter": [1 - .05 * r for r in FILTER],
                  "weight": [max(0.0, 1 - 2.2 * r) for r in WEIGHT]}
        tuned, cnn = detr_ft_y, detr_ft_d
        macs = {"filter": [1 - .1 * r for r in FILTER]}
        lat = {"filter": [1 + r for r in FILTER], "weight": [1 + .5 * r for r in WEIGHT]}
        size = [1 + .1 * r for r in WEIGHT]
        scale = 0.5
    else:
        raise ValueError(f"unknown world {world!r}; one of {', '.join(WORLDS)}")
    macs["weight"] = [1.0] * len(WEIGHT)
    return {"detr": {"pruned": pruned, "finetuned": tuned, "map": 0.117 * scale,
                     "latency": 205.0 * scale, "macs": 204.87e9 * scale},
            "cnn": {"pruned": {g: [max(0.0, v - .05) if i else 1 for i, v in enumerate(c)]
                               for g, c in cnn.items()}, "finetuned": cnn, "map": 0.3,
                    "latency": 50.0, "macs": 10e9},
            "shares": {"macs": macs, "latency": lat, "bytes": size}}


def simulate_kitti(world: dict, runs: int, noise: Noise, rng: np.random.Generator,
                   ) -> pd.DataFrame:
    """One simulated second-study table as `make kitti-study` writes it."""
    rows = []
    shares = world["shares"]
    for name, family, key in (("deformable-detr", "deformable-detr", "detr"),
                              ("yolov3-small", "yolov3", "cnn")):
        model = world[key]
        for g, ratios in (("filter", FILTER), ("weight", WEIGHT)):
            for state, ids in (("pruned", [1]), ("finetuned", range(1, runs + 1))):
                for k in ids:
                    for i, r in enumerate(ratios):
                        kept = model[state][g][i]
                        mp = max(0.0, model["map"] * (kept + noise.at("map", r)
                                                     * rng.standard_normal()))
                        lat = model["latency"] * shares["latency"][g][i] * math.exp(
                            noise.at("log_latency", r) * rng.standard_normal())
                        size = shares["bytes"][i] if g == "weight" else 1 - r
                        rows.append({
                            "scenario": f"{name}.{g}.{state}", "run": k, "ratio": r,
                            "granularity": g, "family": family,
                            "method": "l1-filter" if g == "filter" else "magnitude",
                            "finetune_steps": 0 if state == "pruned" else 30, "map": mp,
                            "latency_ms": lat, "macs": model["macs"] * shares["macs"][g][i],
                            "bytes_stored": 160e6 * size})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ calibration


def _rules(study: str):
    if study == "kitti":
        from prunekit.stats.findings.kitti import RULES, prepare
        return RULES, prepare
    from prunekit.stats.findings.paper import RULES
    return RULES, lambda df: df


def calibrate(study: str, world: str, runs: int, studies: int, noise: Noise,
              seed: int = 0) -> pd.DataFrame:
    """Verdict counts per finding over ``studies`` simulated studies (rows: findings;
    columns: the verdicts, as fractions)."""
    rules, prepare = _rules(study)
    truth = (kitti_world if study == "kitti" else paper_world)(world)
    draw = simulate_kitti if study == "kitti" else simulate_paper
    rng = np.random.default_rng(seed)
    counts = {r.id: dict.fromkeys(VERDICTS, 0) for r in rules}
    for _ in range(studies):
        table = prepare(draw(truth, runs, noise, rng))
        for f in judge_all(rules, table, evidence=False, beside=False):
            counts[f.id][f.verdict] += 1
    return pd.DataFrame(counts).T.div(studies)


def rates(study: str, noise: Noise, runs: Sequence[int], studies: int, seed: int = 0,
          true_runs: Sequence[int] = ()) -> pd.DataFrame:
    """One row per (finding, world, runs): the share of each verdict. Every world at ``runs``;
    the true world also at ``true_runs`` (to find the fewest runs that reproduce it)."""
    frames = []
    for world in WORLDS:
        counts = sorted(set(runs) | (set(true_runs) if world == TRUE_WORLD else set()))
        for n in counts:
            t = calibrate(study, world, n, studies, noise, seed)
            frames.append(t.assign(world=world, runs=n).rename_axis("finding").reset_index())
    return pd.concat(frames, ignore_index=True)
