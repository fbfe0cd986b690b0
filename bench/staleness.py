"""Staleness experiment: fixed clipping, clip-higher and BAPO on stale, reused data (demo task).

Three `tidal train` runs, one after another, identical but for the policy objective: same seed,
steps, learning rate, and an off-policy replay set-up in which groups are drawn from the buffer
several times and about 4 policy versions after they were generated (the achieved staleness is
measured by the learner and reported). Writes bench/results/staleness.json (per method: final
held-out accuracy, minimum entropy, mean staleness, the curves) and bench/results/staleness.png.

    tidal bench staleness                 # full run (~7 minutes on 2 cores)
    tidal bench staleness --quick         # smoke run (few steps)
    tidal bench staleness --steps 150 --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench._common import wait_for_other_runs

RESULTS_DIR = Path(__file__).resolve().parent / "results"

METHODS: dict[str, dict] = {  # label -> loss.objective override; dual clip (3.0) is the same for all
    "fixed [0.8, 1.2]": {"name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.2},
    "clip-higher [0.8, 1.28]": {"name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28},
    "BAPO": {"name": "bapo"},  # paper defaults (learner/loss_config.py)
}

# Off-policy data: the admission window lets workers run 2 versions ahead of the learner; FIFO
# sampling with max_times_sampled 2 feeds every group to two consecutive updates, oldest first; the
# replay drops only groups beyond 6 versions, so what is sampled is used, not evicted.
STALE_OVERRIDES = {
    "rollout": {"max_staleness": 2},
    "replay": {"selector": "fifo", "max_times_sampled": 2, "max_staleness": 6},
}

TRAIN_KEYS = ("step", "wall_s", "entropy", "reward_mean", "staleness_mean", "c_low", "c_high", "bapo_rho")
EVAL_KEYS = ("step", "wall_s", "eval_accuracy", "eval_accuracy_greedy")


def run_overrides(name: str, objective: dict, steps: int, seed: int, lr: float, eval_every: int,
                  run_root: Path) -> dict:
    """The whole run config, as overrides of the demo defaults; only `objective` differs between methods."""
    return {
        "name": name, "steps": steps, "seed": seed, "run_root": str(run_root),
        **STALE_OVERRIDES,
        "learner": {"seed": seed, "optim": {"lr": lr}},
        "loss": {"objective": objective},
        "eval": {"every": eval_every},
        "ray": {"include_dashboard": False},  # port 8265 may belong to another run on this machine
    }


def extract_curves(records: list[dict]) -> dict:
    """Columns of the per-step training metrics and of the evaluations (which include step 0).

    A key a record lacks (bapo_rho outside BAPO) is None in its column, so columns stay aligned."""
    train = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    return {"train": {k: [r.get(k) for r in train] for k in TRAIN_KEYS},
            "eval": {k: [r.get(k) for r in evals] for k in EVAL_KEYS}}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(curves: dict) -> dict:
    """Final and initial held-out accuracy, entropy extremes, and the staleness the learner saw.

    Steady-state staleness is the mean over the second half of the steps (the buffer fills first);
    the late accuracy averages the last third of the evaluations, as one evaluation is noisy."""
    train, evals = curves["train"], curves["eval"]
    if not train["step"] or not evals["step"]:
        raise ValueError(f"curves need training steps and evaluations; got {len(train['step'])} steps, "
                         f"{len(evals['step'])} evaluations")
    entropy = [e for e in train["entropy"] if e is not None]
    staleness = train["staleness_mean"]
    accuracy = evals["eval_accuracy"]
    return {
        "initial_eval_accuracy": evals["eval_accuracy"][0],
        "final_eval_accuracy": evals["eval_accuracy"][-1],
        "final_eval_accuracy_greedy": evals["eval_accuracy_greedy"][-1],
        "late_eval_accuracy_mean": _mean(accuracy[-max(1, len(accuracy) // 3):]),
        "min_entropy": min(entropy),
        "final_entropy": entropy[-1],
        "staleness_mean": _mean(staleness),
        "staleness_mean_second_half": _mean(staleness[len(staleness) // 2:]),
        "steps": train["step"][-1],
        "wall_s": train["wall_s"][-1],
    }


def run_method(label: str, objective: dict, args: argparse.Namespace, run_root: Path) -> dict:
    from cluster.config import load_config
    from cluster.driver import train
    from cluster.metrics import read_metrics

    name = "staleness-" + "".join(c for c in label if c.isalnum() or c in ".-")
    cfg = load_config(None, run_overrides(name, objective, args.steps, args.seed, args.lr, args.eval_every, run_root))
    wait_for_other_runs("staleness")
    print(f"staleness: {label}: {cfg.steps} steps", file=sys.stderr)
    started = time.time()
    run_dir = train(cfg)
    curves = extract_curves(read_metrics(run_dir / "metrics.jsonl"))
    return {"objective": objective, "run_s": time.time() - started, "summary": summarize(curves), "curves": curves}


def plot(results: dict, path: Path, title: str) -> None:
    """Two panels against learner step: held-out accuracy (T=1) and policy entropy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, ent_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, result in results.items():
        evals, train = result["curves"]["eval"], result["curves"]["train"]
        line, = acc_ax.plot(evals["step"], evals["eval_accuracy"], marker="o", label=label)
        ent_ax.plot(train["step"], train["entropy"], color=line.get_color(), alpha=0.8, label=label)
    acc_ax.set(xlabel="learner step", ylabel="held-out accuracy (T=1, pass@1)", ylim=(0, 1))
    ent_ax.set(xlabel="learner step", ylabel="policy entropy (nats/token, batch mean)")
    for ax in (acc_ax, ent_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tidal bench staleness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 12 steps per method")
    parser.add_argument("--steps", type=int, default=150, help="learner steps per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-4, help="the same for every method")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for staleness.json and .png")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every = 12, 6
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    run_root = Path(tempfile.mkdtemp(prefix="tidal-staleness-"))
    try:
        results = {label: run_method(label, objective, args, run_root) for label, objective in METHODS.items()}
    finally:
        shutil.rmtree(run_root, ignore_errors=True)  # checkpoints and replay files; the JSON keeps the curves
    report = {
        "settings": {"steps": args.steps, "seed": args.seed, "lr": args.lr, "eval_every": args.eval_every,
                     "quick": args.quick, **STALE_OVERRIDES},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "total_s": time.time() - started,
        "methods": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "staleness.json").write_text(json.dumps(report, indent=1))
    plot(results, args.out / "staleness.png",
         f"Demo task, stale replay (lr {args.lr:g}, seed {args.seed}, {args.steps} steps per method)")
    for label, result in results.items():
        print(f"{label:>24}: " + ", ".join(f"{k} {v:.3g}" for k, v in result["summary"].items()))
    print(f"total {report['total_s']:.0f}s; wrote {args.out / 'staleness.json'} and {args.out / 'staleness.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
