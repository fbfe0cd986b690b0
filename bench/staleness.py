"""Staleness experiment: fixed clipping, clip-higher and BAPO on stale, reused data (demo task).

`tidal train` runs that are identical but for the policy objective, at two levels of staleness
(nominally 4 and 8 policy versions between generating a group and training on it; measured 5.0
and 9.5), over several seeds, with partial rollouts on: new weights reach the engines between
steps and every token keeps the version that produced it. BAPO runs three times: at the paper's
rho0 0.4 and at higher rho0 values at which its bounds move on this task. Runs go seed by seed,
so an interrupted experiment still has whole seeds; bench/results/staleness.json is rewritten after every run (per level and method: mean
and spread over seeds of the final and late-third held-out accuracy, of the minimum entropy, of
the achieved staleness and of how often BAPO's bounds moved; every run's curves) with
bench/results/staleness.png (mean curves over seeds, the band spanning them).

    tidal bench staleness                 # full run (~25 minutes on 2 cores)
    tidal bench staleness --quick         # smoke run (one seed, one level, few steps)
    tidal bench staleness --seeds 0 1 --levels 4 --steps 150
    tidal bench staleness --resume        # keep the runs already in staleness.json, make the rest
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._common import wait_for_other_runs

RESULTS_DIR = Path(__file__).resolve().parent / "results"

METHODS: dict[str, dict] = {  # label -> loss.objective override; dual clip (3.0) is the same for all
    "fixed [0.8, 1.2]": {"name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.2},
    "clip-higher [0.8, 1.28]": {"name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28},
    "BAPO rho0 0.4": {"name": "bapo"},  # paper defaults (learner/loss_config.py)
    # The positive-advantage share of the gradient sits at 0.52-0.53 on this task (median per run),
    # so at 0.4 the bounds never leave [0.6, 1.2]; above it BAPO has to widen them.
    "BAPO rho0 0.6": {"name": "bapo", "rho0": 0.6},
    "BAPO rho0 0.55": {"name": "bapo", "rho0": 0.55},  # between: where the bounds may settle inside their range
}

# Off-policy data: the admission window lets workers run `ahead` versions in front of the learner;
# FIFO sampling with max_times_sampled 2 feeds every group to two consecutive updates, oldest
# first; the replay drops only groups older than `drop` versions, so what is sampled is used.
LEVELS: dict[int, dict] = {  # nominal staleness -> overrides; the achieved figure is measured
    4: {"ahead": 2, "drop": 6},
    8: {"ahead": 4, "drop": 14},
}

STEP_KEYS = ("step", "wall_s", "entropy", "reward_mean", "staleness_mean", "c_low", "c_high", "bapo_rho")
EVAL_KEYS = ("step", "wall_s", "eval_accuracy", "eval_accuracy_greedy")
SPREAD_KEYS = ("final_eval_accuracy", "late_eval_accuracy_mean", "min_entropy", "staleness_mean_second_half",
               "bounds_moved_share")


def stale_overrides(level: int) -> dict:
    window = LEVELS[level]
    return {
        "rollout": {"max_staleness": window["ahead"], "partial": True},
        "replay": {"selector": "fifo", "max_times_sampled": 2, "max_staleness": window["drop"]},
    }


def run_overrides(name: str, objective: dict, level: int, steps: int, seed: int, lr: float, eval_every: int,
                  run_root: Path) -> dict:
    """The whole run config, as overrides of the demo defaults; only `objective` differs between methods."""
    return {
        "name": name, "steps": steps, "seed": seed, "run_root": str(run_root),
        **stale_overrides(level),
        "learner": {"seed": seed, "optim": {"lr": lr}},
        "loss": {"objective": objective},
        "eval": {"every": eval_every},
        "ray": {"include_dashboard": False},  # port 8265 may belong to another run on this machine
    }


def extract_curves(records: list[dict]) -> dict:
    """Columns of the per-step training metrics and of the evaluations (which include step 0).

    A key a record lacks (bapo_rho outside BAPO) is None in its column, so columns stay aligned."""
    steps = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    return {"train": {k: [r.get(k) for r in steps] for k in STEP_KEYS},
            "eval": {k: [r.get(k) for r in evals] for k in EVAL_KEYS}}


def summarize(curves: dict, first_bounds: tuple[float, float]) -> dict:
    """Final and initial held-out accuracy, entropy extremes, the staleness the learner saw, and the
    share of steps whose clipping bounds left `first_bounds` (always 0 for fixed clipping).

    Steady-state staleness is the mean over the second half of the steps (the buffer fills first);
    the late accuracy averages the last third of the evaluations, as one evaluation is noisy."""
    train, evals = curves["train"], curves["eval"]
    if not train["step"] or not evals["step"]:
        raise ValueError(f"curves need training steps and evaluations; got {len(train['step'])} steps, "
                         f"{len(evals['step'])} evaluations")
    entropy = [e for e in train["entropy"] if e is not None]
    staleness = train["staleness_mean"]
    accuracy = evals["eval_accuracy"]
    bounds = list(zip(train["c_low"], train["c_high"]))
    moved = [(low, high) for low, high in bounds  # metrics carry float32 bounds: compare with a tolerance
             if low is not None and max(abs(low - first_bounds[0]), abs(high - first_bounds[1])) > 1e-6]
    return {
        "initial_eval_accuracy": accuracy[0],
        "final_eval_accuracy": accuracy[-1],
        "final_eval_accuracy_greedy": evals["eval_accuracy_greedy"][-1],
        "late_eval_accuracy_mean": statistics.fmean(accuracy[-max(1, len(accuracy) // 3):]),
        "min_entropy": min(entropy),
        "final_entropy": entropy[-1],
        "staleness_mean": statistics.fmean(staleness),
        "staleness_mean_second_half": statistics.fmean(staleness[len(staleness) // 2:]),
        "bounds_moved_share": len(moved) / len(bounds),
        "c_high_max": max((b[1] for b in bounds if b[1] is not None), default=None),
        "steps": train["step"][-1],
        "wall_s": train["wall_s"][-1],
    }


def spread(runs: list[dict]) -> dict:
    """Over seeds, for each key of SPREAD_KEYS: mean, sample standard deviation, min and max."""
    out = {}
    for key in SPREAD_KEYS:
        values = [run["summary"][key] for run in runs]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}
    return out


def run_method(label: str, level: int, seed: int, args: argparse.Namespace, run_root: Path) -> dict:
    from cluster.config import load_config
    from cluster.driver import train
    from cluster.metrics import read_metrics

    objective = METHODS[label]
    name = f"staleness{level}-s{seed}-" + "".join(c for c in label if c.isalnum() or c in ".-")
    cfg = load_config(None, run_overrides(name, objective, level, args.steps, seed, args.lr, args.eval_every,
                                          run_root))
    wait_for_other_runs("staleness")
    print(f"staleness: level {level}, seed {seed}, {label}: {cfg.steps} steps", file=sys.stderr)
    started = time.time()
    run_dir = train(cfg)
    curves = extract_curves(read_metrics(run_dir / "metrics.jsonl"))
    return {"level": level, "seed": seed, "method": label, "objective": objective, "run_s": time.time() - started,
            "summary": summarize(curves, cfg.loss.objective.fixed_bounds()), "curves": curves}


def aggregate(runs: list[dict]) -> dict:
    """level -> method -> spread over the seeds run so far."""
    table: dict = {}
    for run in runs:
        table.setdefault(run["level"], {}).setdefault(run["method"], []).append(run)
    return {level: {label: {"seeds": [r["seed"] for r in group], **spread(group)} for label, group in methods.items()}
            for level, methods in table.items()}


def plot(runs: list[dict], path: Path, title: str) -> None:
    """One row per staleness level: held-out accuracy (T=1) and policy entropy against learner
    step, the mean over seeds as a line and the band between the lowest and highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    levels = sorted({r["level"] for r in runs})
    fig, axes = plt.subplots(len(levels), 2, figsize=(12, 4.2 * len(levels)), squeeze=False)
    for (acc_ax, ent_ax), level in zip(axes, levels):
        for label in METHODS:
            group = [r for r in runs if r["level"] == level and r["method"] == label]
            if not group:
                continue
            for ax, part, key in ((acc_ax, "eval", "eval_accuracy"), (ent_ax, "train", "entropy")):
                length = min(len(r["curves"][part][key]) for r in group)
                x = group[0]["curves"][part]["step"][:length]
                y = np.array([r["curves"][part][key][:length] for r in group], dtype=float)
                line, = ax.plot(x, y.mean(axis=0), label=f"{label} ({len(group)} seeds)")
                ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=line.get_color(), alpha=0.15)
        acc_ax.set(xlabel="learner step", ylabel="held-out accuracy (T=1, pass@1)", ylim=(0, 1),
                   title=f"nominal staleness {level}")
        ent_ax.set(xlabel="learner step", ylabel="policy entropy (nats/token)", title=f"nominal staleness {level}")
        for ax in (acc_ax, ent_ax):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tidal bench staleness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, level 4, 12 steps")
    parser.add_argument("--steps", type=int, default=150, help="learner steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--levels", type=int, nargs="+", default=sorted(LEVELS), choices=sorted(LEVELS))
    parser.add_argument("--lr", type=float, default=5e-4, help="the same for every method")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for staleness.json and .png")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs of an earlier staleness.json made with the same settings")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.seeds, args.levels = 12, 6, args.seeds[:1], [4]
    return args


def settings(args: argparse.Namespace) -> dict:
    return {"steps": args.steps, "seeds": args.seeds, "levels": {n: stale_overrides(n) for n in args.levels},
            "lr": args.lr, "eval_every": args.eval_every, "quick": args.quick}


def earlier_runs(args: argparse.Namespace) -> tuple[list[dict], float]:
    """With --resume: the runs of the staleness.json in --out and the seconds they took, if its
    settings are these (a run made with other settings would not be comparable)."""
    path = args.out / "staleness.json"
    if not (args.resume and path.is_file()):
        return [], 0.0
    report = json.loads(path.read_text())
    if report["settings"] != json.loads(json.dumps(settings(args))):  # as JSON: level keys are strings there
        raise SystemExit(f"--resume: {path} was made with other settings {report['settings']}; "
                         f"these are {settings(args)}")
    return report["runs"], report["total_s"]


def write(args: argparse.Namespace, started: float, runs: list[dict]) -> None:
    report = {
        "settings": settings(args),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "total_s": time.time() - started,
        "summary": aggregate(runs),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "staleness.json").write_text(json.dumps(report, indent=1))
    plot(runs, args.out / "staleness.png", f"Demo task, stale replay with partial rollouts (lr {args.lr:g}, "
                                           f"{args.steps} steps per run, mean and range over seeds)")


def print_table(summary: dict) -> None:
    for level, methods in summary.items():
        for label, row in methods.items():
            print(f"staleness {level} {label:>24}: " + ", ".join(
                f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in row.items() if k != "seeds"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs, earlier_s = earlier_runs(args)
    started = time.time() - earlier_s  # total_s counts the earlier runs too
    done = {(r["level"], r["seed"], r["method"]) for r in runs}
    run_root = Path(tempfile.mkdtemp(prefix="tidal-staleness-"))
    try:
        for seed in args.seeds:
            for level in args.levels:
                for label in (m for m in METHODS if (level, seed, m) not in done):
                    runs.append(run_method(label, level, seed, args, run_root))
                    write(args, started, runs)
    finally:
        shutil.rmtree(run_root, ignore_errors=True)  # checkpoints and replay files; the JSON keeps the curves
    print_table(aggregate(runs))
    print(f"total {time.time() - started:.0f}s; wrote {args.out / 'staleness.json'} and {args.out / 'staleness.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
