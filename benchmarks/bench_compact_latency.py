"""Real speed-up of compacted filter pruning on yolov3-416 (target: ≥ 0.9 × the MACs reduction).

CPU, batch 1, two threads: latency of the dense model against the compacted filter-pruned model
at 50 % and 75 %, measured with `prunekit.bench.Latency` (torch.utils.benchmark, median) in the
runtime `prunekit bench` picks by default (oneDNN Graph fusion on CPU; `--runtime` to choose,
several separated by commas). The models are prepared once, then timed in turn over several
rounds, and each model's latency is the median of its rounds, so a slow spell of this shared
machine falls on all of them rather than on one side of the ratio. `--round-to N` compacts with
`mask --round-to N` (its extra MACs count: the MACs reduction is the rounded model's).
`--profile` prints, per layer (eager), the compacted model's time beyond its MACs.
`--primitives` (oneDNN Graph) splits each pass between oneDNN's primitives (the convolutions,
the concatenations) and the work around them, from oneDNN's verbose log, and lists the compacted
model's primitives furthest from the dense model's MACs a second.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import (  # noqa: E402
    machine_state,
    module_profile,
    onednn_primitives,
    print_excess,
    print_headroom,
    print_rounds,
    report,
)

from prunekit import checkpoint  # noqa: E402
from prunekit.bench import (  # noqa: E402
    Latency,
    bench,
    inference_form,
    matmul_rate,
    resolve_runtime,
)
from prunekit.init import init  # noqa: E402
from prunekit.mask import PruneConfig, mask, prunable  # noqa: E402
from prunekit.score import l1_filter  # noqa: E402


def main(threads: int = 2, arch: str = "yolov3", img: int = 416, rounds: int = 9,
         runtimes: str = "auto", seconds: float = 1.0, round_to: int = 1,
         profile: bool = False, primitives: bool = False) -> bool:
    chosen = [resolve_runtime(r, torch.device("cpu")) for r in runtimes.split(",")]
    if primitives and "onednn-graph" not in chosen:
        raise SystemExit(f"--primitives reads oneDNN Graph's primitives, not those of "
                         f"{', '.join(chosen)}: add onednn-graph to --runtime")
    torch.manual_seed(0)
    dense = checkpoint.from_bytes(checkpoint.to_bytes(init(arch, classes=80, img_size=img)))
    dense.scores = l1_filter(dense.state, prunable(dense))
    models = {0.0: dense}
    for ratio in (0.5, 0.75):
        small = mask(dense, PruneConfig(ratio, granularity="filter", compact=True,
                                    round_to=round_to))
        models[ratio] = checkpoint.from_bytes(checkpoint.to_bytes(small))
    figures = {r: bench(ck, latency=False) for r, ck in models.items()}
    x = torch.rand(1, 3, img, img)
    timed = {(rt, r): Latency(ck.build(), x, rt, threads=threads, fallback=False)
             for rt in chosen for r, ck in models.items()}
    latencies: dict[tuple[str, float], list[float]] = {k: [] for k in timed}
    probes = []
    for _ in range(rounds):
        for key, t in timed.items():
            latencies[key].append(t.measure(seconds)[0] * 1e3)
        probes.append(machine_state())
    base = figures[0.0]
    ok = True
    for rt in chosen:
        base_ms = statistics.median(latencies[rt, 0.0])
        for ratio in (0.5, 0.75):
            m = figures[ratio]
            ms = statistics.median(latencies[rt, ratio])
            macs_reduction = base["macs"] / m["macs"]
            speedup = base_ms / ms
            rounded = f" --round-to {round_to}" if round_to > 1 else ""
            ok &= report(f"{arch}-{img} filter {ratio:.0%}{rounded} ({rt}): speedup / "
                         f"macs_reduction", speedup / macs_reduction, 0.9,
                         lower_is_better=False,
                         detail=f"latency {base_ms:.1f} -> {ms:.2f} ms (x{speedup:.2f}), MACs "
                                f"x{macs_reduction:.2f}, bytes "
                                f"{base['bytes_stored'] / 1e6:.1f} -> "
                                f"{m['bytes_stored'] / 1e6:.1f} MB, median of {rounds} rounds "
                                f"of {seconds:g} s")
    print_rounds({f"{rt} {r:.0%}": latencies[rt, r] for rt, r in timed}, probes)
    peak = matmul_rate(threads)  # once, for every runtime's lines
    for rt in chosen:
        print_headroom(rt, [(f"{r:.0%}", statistics.median(latencies[rt, r]), figures[r]["macs"])
                            for r in models], peak, threads)
    if primitives and "onednn-graph" in chosen:
        print_primitives({r: timed["onednn-graph", r] for r in models},
                         {r: statistics.median(latencies["onednn-graph", r]) for r in models},
                         {r: figures[r]["macs"] for r in models})
    if profile:
        torch.set_num_threads(threads)
        # The eager form the timed runs use (deployed, channels-last on the CPU).
        forms = {r: inference_form(models[r].build(), x, "eager") for r in (0.0, 0.75)}
        eager = {r: form[0] for r, form in forms.items()}
        x = forms[0.0][1]
        names = [f"layers.{i}" for i in range(len(eager[0.0].layers))]
        print("-- compacted at 75 %, eager, per layer: time beyond the MACs")
        print_excess(module_profile(eager[0.0], x, names), module_profile(eager[0.75], x, names))
    return ok


def print_primitives(timed: dict[float, Latency], pass_ms: dict[float, float],
                     macs: dict[float, int], passes: int = 40) -> None:
    """Each model's pass split between oneDNN's primitives and the work around them (the
    runtime's own: TorchScript, oneDNN Graph's partitions, PyTorch's operators between them),
    the ratio the primitives alone would give, and the compacted models' primitives furthest
    from the dense model's MACs a second (the same primitive of the dense pass)."""
    runs = {r: onednn_primitives(t.step_in_context, passes) for r, t in timed.items()}
    own = {r: statistics.median(sum(ms for _, ms, _ in p) for p in ps) for r, ps in runs.items()}
    print(f"-- oneDNN's primitives a pass (its verbose log, median of {passes} passes), "
          f"beside the timed pass (median of the rounds)")
    print(f"{'model':<8} {'primitives':>10} {'pass ms':>8} {'prim. ms':>9} {'around ms':>10} "
          f"{'ratio by prim.':>15}")
    for r, ps in runs.items():
        ratio = "" if r == 0.0 else f"{own[0.0] / own[r] / (macs[0.0] / macs[r]):15.3f}"
        print(f"{r:<8.0%} {len(ps[0]):10d} {pass_ms[r]:8.2f} {own[r]:9.2f} "
              f"{pass_ms[r] - own[r]:10.2f} {ratio}")
    dense = runs[0.0]
    for r, ps in runs.items():
        if r == 0.0 or len(ps[0]) != len(dense[0]):
            continue
        rows = []
        for i, (problem, _, m) in enumerate(ps[0]):
            t = statistics.median(p[i][1] for p in ps)
            t_dense = statistics.median(p[i][1] for p in dense)
            m_dense = dense[0][i][2]
            ideal = t_dense * m / m_dense if m_dense else t_dense * own[r] / own[0.0]
            rows.append((t - ideal, t, m / t / 1e6 if m else 0.0,
                         m_dense / t_dense / 1e6 if m_dense else 0.0, problem))
        rows.sort(reverse=True)
        print(f"-- compacted at {r:.0%}: primitives by time beyond the dense one's MACs a second "
              f"(the rest a share of time); all: {sum(x[0] for x in rows):.2f} ms of "
              f"{own[r]:.2f}")
        for excess, t, rate, rate_dense, problem in rows[:8]:
            print(f"  {excess:6.3f} ms beyond  {t:6.3f} ms  {rate:6.1f} G MACs/s "
                  f"(dense {rate_dense:6.1f})  {problem}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime", default="auto",
                        help="auto, onednn-graph, eager or onnxruntime; several with commas")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--primitives", action="store_true")
    args = parser.parse_args()
    sys.exit(0 if main(threads=args.threads, rounds=args.rounds, runtimes=args.runtime,
                       round_to=args.round_to, profile=args.profile,
                       primitives=args.primitives) else 1)
