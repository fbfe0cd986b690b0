"""Tidal vs TRL's GRPOTrainer: time to held-out pass@1 0.70 on the demo, side by side.

TRL runs in its own virtualenv (`--trl-venv`, created with torch 2.13.0 and trl from PyPI on first
use) through bench/_trl_grpo.py, one process, on the same demo model, training split, held-out
set, scoring rule and RL settings as `tidal train` (16 prompts x 8 samples per step, lr 2e-4,
constant, clip [0.8, 1.28], token-mean loss, no KL, group-normalised advantages, at most 8 new
tokens, T=1). Each seed has its own demo model, the same for both systems, built before any clock
starts; Tidal evaluates sampled pass@1 only, as the TRL runner does. Tidal runs once per rollout
engine in each round (`--engines`: vllm, the demo's default, and transformers, the engine for tiny
models on CPU, which is also what TRL generates with, run with 8 groups in flight per worker
instead of the default 16, its best here); rounds alternate which system goes first.
Time to target counts from each run's first evaluation (training only); start-up is reported
beside it. Writes bench/results/trl.json.

    tidal bench trl                        # 2 rounds of 3 runs (~12 minutes on 2 cores after the venv exists)
    tidal bench trl --rounds 1 --steps 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import outcome, train_evaluations, wait_for_other_runs, write_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "trl.json"
RUNNER = ROOT / "bench" / "_trl_grpo.py"
TARGET = 0.70
# Each engine at its best on this demo (actors/config.py: groups_in_flight)
ENGINE_SETTINGS = {"vllm": {}, "transformers": {"groups_in_flight": 8}}


def ensure_trl_venv(venv: Path, timeout_s: float) -> Path:
    """TRL's own virtualenv, created (or completed, after an install that broke off) on first use."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import trl"], capture_output=True,
                                          timeout=timeout_s).returncode == 0:
        return python
    print(f"trl: installing torch 2.13.0 and trl from PyPI into {venv}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=timeout_s)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0", "trl"], check=True, timeout=timeout_s)
    return python


def trl_spec(args: argparse.Namespace, seed: int, work: Path) -> dict:
    """The demo's model, data and RL settings (cluster/config.py defaults) for the TRL runner."""
    from cluster.config import RunConfig
    from cluster.demo_model import build_demo_model
    from envs.tasks import ArithmeticTasks

    demo = RunConfig()
    tasks = ArithmeticTasks(**demo.env.task_params)
    train, held_out = tasks.train_tasks(), tasks.eval_tasks()
    objective = demo.loss.objective
    return {
        "model_path": str(build_demo_model(seed=seed, settings=demo.model.demo)), "seed": seed,
        "train_prompts": [t.prompt for t in train], "train_answers": [t.answer for t in train],
        "eval_prompts": [t.prompt for t in held_out], "eval_answers": [t.answer for t in held_out],
        "steps": args.steps, "eval_every": args.eval_every, "lr": demo.learner.optim.lr,
        "prompts_per_step": demo.learner.groups_per_step, "group_size": demo.rollout.group_size,
        "max_new_tokens": demo.rollout.sampling.max_new_tokens, "eps_low": objective.eps_low,
        "eps_high": objective.eps_high, "torch_threads": args.torch_threads,
        "output_dir": str(work / f"trl-{seed}"), "output": str(work / f"trl-{seed}.json"),
    }


def run_trl(python: Path, args: argparse.Namespace, seed: int, work: Path) -> dict:
    spec = trl_spec(args, seed, work)
    spec_path = work / f"trl-{seed}-spec.json"
    spec_path.write_text(json.dumps(spec))
    wait_for_other_runs("trl")
    print(f"trl: TRL GRPOTrainer seed {seed}: {args.steps} steps", file=sys.stderr)
    started = time.time()
    # -P: not bench/ first on the path, where this file would shadow the trl package
    subprocess.run([str(python), "-P", str(RUNNER), str(spec_path)], check=True, timeout=args.run_timeout_s)
    result = json.loads(Path(spec["output"]).read_text())
    return {"system": "trl", "seed": seed, "run_s": time.time() - started, "startup_s": result["startup_s"],
            "trl_version": result["trl_version"], **_timed_outcome(result["evals"], args.target)}


def run_tidal(args: argparse.Namespace, seed: int, work: Path, engine: str) -> dict:
    evals, run_s = train_evaluations("trl", {
        "name": f"trl-bench-tidal-{engine}-{seed}", "seed": seed, "steps": args.steps, "run_root": str(work),
        "learner": {"seed": seed}, "rollout": {"engine": {"kind": engine}, **ENGINE_SETTINGS[engine]},
        "eval": {"every": args.eval_every, "greedy": False}},  # TRL's runner evaluates sampled pass@1 only
        f"tidal train seed {seed}, {engine} engine")
    return {"system": f"tidal/{engine}", "seed": seed, "run_s": run_s, "startup_s": evals[0]["wall_s"],
            **_timed_outcome(evals, args.target)}


def _timed_outcome(evals: list[dict], target: float) -> dict:
    return outcome(evals, target) | {"train_s": evals[-1]["wall_s"] - evals[0]["wall_s"]}


def summary(runs: list[dict], systems: list[str]) -> dict:
    def median_of(system: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["system"] == system and r[key] is not None]
        return statistics.median(values) if values else None

    return {f"{system}_median_{key}": median_of(system, key)
            for system in systems for key in ("time_to_target_s", "startup_s", "final_accuracy")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal bench trl", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of one run per system, seeds 0..rounds-1")
    parser.add_argument("--steps", type=int, default=200, help="learner steps per run (the demo's)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--target", type=float, default=TARGET)
    parser.add_argument("--torch-threads", type=int, default=2, help="TRL's torch threads (the machine's cores)")
    parser.add_argument("--trl-venv", type=Path, default=ROOT / ".venv-trl")
    parser.add_argument("--run-timeout-s", type=float, default=1800.0,
                        help="bound on one TRL run, and on each step of installing its virtualenv")
    parser.add_argument("--engines", nargs="+", choices=["vllm", "transformers"], default=["vllm", "transformers"],
                        help="Tidal's rollout engines, one Tidal run each per round")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    systems = [*(f"tidal/{engine}" for engine in args.engines), "trl"]
    from cluster.config import RunConfig
    from cluster.demo_model import build_demo_model

    python = ensure_trl_venv(args.trl_venv, args.run_timeout_s)
    for seed in range(args.rounds):  # each seed's demo model (Tidal's `seed` builds it; TRL gets the same), before any clock
        build_demo_model(seed=seed, settings=RunConfig().model.demo)
    started, runs = time.time(), []
    with tempfile.TemporaryDirectory(prefix="tidal-trl-") as work:
        for seed in range(args.rounds):  # the order alternates from round to round
            for system in systems if seed % 2 == 0 else reversed(systems):
                runs.append(run_trl(python, args, seed, Path(work)) if system == "trl"
                            else run_tidal(args, seed, Path(work), system.removeprefix("tidal/")))
    write_report(args.output, vars(args), started, [summary(runs, systems), *runs])
    print(f"{'system':>18} {'seed':>4} {'start-up s':>10} {'s to target':>11} {'final pass@1':>12}")
    for r in runs:
        reached = f"{r['time_to_target_s']:.1f}" if r["time_to_target_s"] is not None else "missed"
        print(f"{r['system']:>18} {r['seed']:>4} {r['startup_s']:>10.1f} {reached:>11} {r['final_accuracy']:>12.3f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
