"""Async vs sync: how much sooner asynchrony reaches a target held-out accuracy.

For each case, pairs of `tidal train` runs that differ only in `mode` (sync: generate, train,
publish, repeat; async: workers generate while the learner trains, within the staleness bound),
the order alternating from pair to pair so that drifting load on the machine hits both modes.
A run's time to target is counted from its first evaluation (start-up excluded) to the first
evaluation at or above the target. Cases: the demo, and the demo whose every env step waits
`--latency` seconds (the agentic case: a tool or sandbox that takes wall time, not CPU; the
evaluation env has no latency, so both modes pay the same for it); on request also `partial`, the
demo with partial rollouts (async workers load new weights between engine steps instead of
draining first; sync mode drains either way). Writes bench/results/async.json.

    tidal bench async                     # 2 pairs per case (~18 minutes on 2 cores)
    tidal bench async --cases demo --pairs 1
    tidal bench async --cases partial --output bench/results/async_partial.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._common import outcome, train_evaluations, write_report

RESULTS = Path(__file__).resolve().parent / "results" / "async.json"
TARGET = 0.70


def case_overrides(case: str, latency_s: float) -> dict:
    """The latency case also bounds reuse (each group trained on at most twice; sync mode uses each
    once anyway): with slow episodes an async learner that may redraw groups without limit outruns
    its data and trains on the same stale groups (measured: it plateaued at 0.57-0.61)."""
    if case == "demo":
        return {}
    if case == "partial":
        return {"rollout": {"partial": True}}
    return {"env": {"params": {"step_latency_s": latency_s}}, "eval": {"envs": [{"name": "arithmetic"}]},
            "replay": {"max_times_sampled": 2}}


def run_once(case: str, mode: str, seed: int, args: argparse.Namespace, run_root: Path) -> dict:
    overrides = case_overrides(case, args.latency)
    evals, run_s = train_evaluations("async", {
        "name": f"async-bench-{case}-{mode}-{seed}", "mode": mode, "seed": seed, "steps": args.steps,
        "run_root": str(run_root), "learner": {"seed": seed}, **overrides,
        "eval": {"every": args.eval_every, **overrides.get("eval", {})},
    }, f"{case} {mode} seed {seed}")
    return {"case": case, "mode": mode, "seed": seed, "run_s": run_s, "first_eval_wall_s": evals[0]["wall_s"],
            **outcome(evals, args.target)}


def speedups(runs: list[dict]) -> list[float | None]:
    """sync time / async time for each pair (same case and seed); None where a run missed the target."""
    by_key = {(r["case"], r["seed"], r["mode"]): r["time_to_target_s"] for r in runs}
    pairs = sorted({(case, seed) for case, seed, _ in by_key})
    return [by_key[(c, s, "sync")] / by_key[(c, s, "async")]
            if by_key[(c, s, "sync")] is not None and by_key[(c, s, "async")] else None for c, s in pairs]


def summary(runs: list[dict], case: str) -> dict:
    mine = [r for r in runs if r["case"] == case]
    ratios = speedups(mine)
    reached = [r for r in ratios if r is not None]

    def median_of(mode: str, key: str) -> float | None:
        values = [r[key] for r in mine if r["mode"] == mode and r[key] is not None]
        return statistics.median(values) if values else None

    return {"case": case, "pairs": len(ratios), "speedups": ratios,
            "median_speedup": statistics.median(reached) if reached else None,
            **{f"{mode}_median_time_to_target_s": median_of(mode, "time_to_target_s") for mode in ("sync", "async")},
            **{f"{mode}_median_gain": statistics.median(r["final_accuracy"] - r["initial_accuracy"]
                                                        for r in mine if r["mode"] == mode)
               for mode in ("sync", "async")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal bench async", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=["demo", "latency", "partial"],
                        default=["demo", "latency"])
    parser.add_argument("--pairs", type=int, default=2, help="alternating sync/async pairs per case")
    parser.add_argument("--steps", type=int, default=200, help="learner steps per run (the demo's)")
    parser.add_argument("--eval-every", type=int, default=10, help="the resolution of the time to target")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds every env step waits (latency case)")
    parser.add_argument("--target", type=float, default=TARGET, help="held-out pass@1 to reach")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started, runs = time.time(), []
    with tempfile.TemporaryDirectory(prefix="tidal-async-") as run_root:
        for case in args.cases:
            for seed in range(args.pairs):
                for mode in ("sync", "async") if seed % 2 == 0 else ("async", "sync"):
                    runs.append(run_once(case, mode, seed, args, Path(run_root)))
    summaries = [summary(runs, case) for case in args.cases]
    write_report(args.output, vars(args), started, summaries + runs)
    print(f"{'case':>8} {'sync s':>8} {'async s':>8} {'speedup (median)':>17}  per pair")
    for s in summaries:
        cells = [f"{s[f'{m}_median_time_to_target_s']:.1f}" if s[f"{m}_median_time_to_target_s"] is not None
                 else "missed" for m in ("sync", "async")]
        median = f"{s['median_speedup']:.2f}x" if s["median_speedup"] is not None else "n/a"
        pairs = ", ".join(f"{r:.2f}" if r is not None else "missed" for r in s["speedups"])
        print(f"{s['case']:>8} {cells[0]:>8} {cells[1]:>8} {median:>17}  {pairs}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
