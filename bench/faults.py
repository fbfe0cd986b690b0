"""Fault injection: `tidal train` runs in which one component is killed with SIGKILL at a random step.

Kinds: a rollout worker, a Redis shard, the learner rank, and the driver (then the run is resumed
with `--resume`); `none` is the control, the same run with nothing killed (what each seed
learns without a fault). Each run is the demo with fewer steps, as its own `tidal train` process; the
benchmark watches metrics.jsonl, kills the target when the chosen step is reached, and records
whether the run completed, how long it took to recover, whether the demo still learned, the
replay's ledger (acknowledged / trained / evicted / unaccounted) and, after a driver kill, which
of the dead driver's processes were still alive once the resumed run had started. Writes
bench/results/faults.json and prints a table.

    tidal bench faults                    # 5 runs of each kind (the README's table)
    tidal bench faults --reps 1 --kinds worker,driver --steps 40
    tidal bench faults --kinds none --out bench/results/faults_control.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import yaml

RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"
KINDS = ("worker", "shard", "learner", "driver")
CONTROL = "none"  # the same run with nothing killed: what the seed learns without a fault
TARGETS = {"worker": "ray::RolloutWorker", "learner": "ray::Learner", "shard": "redis-server"}
RUN_TIMEOUT_S = 900.0


@dataclass
class FaultRun:
    kind: str
    kill_step: int
    completed: bool = False
    exit_code: int | None = None
    recover_s: float | None = None
    first_eval: float | None = None
    last_eval: float | None = None
    ledger: dict = field(default_factory=dict)
    leftover_after_resume: int | None = None  # driver kind: the dead driver's processes alive after the resume started
    restored_from: int | None = None  # learner kind: the step of the newest checkpoint when the learner was killed
    worker_restarts: int = 0
    duplicate_steps: int = 0  # steps recorded more than once in metrics.jsonl (must be 0: rewinds drop them)
    wall_s: float = 0.0
    error: str = ""

    @property
    def learned(self) -> float | None:
        return None if self.first_eval is None or self.last_eval is None else self.last_eval - self.first_eval


def run_config(steps: int, run_root: Path, seed: int) -> dict:
    """The demo, shortened, with checkpoints often enough that a learner or driver kill loses little."""
    return {"name": "fault", "steps": steps, "seed": seed, "run_root": str(run_root),
            "eval": {"every": max(steps // 4, 1)}, "checkpoint": {"every_steps": 10, "every_s": 30},
            "ray": {"include_dashboard": False}}


def _records(run_dir: Path | None) -> list[dict]:
    path = run_dir / "metrics.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def _run_dir(run_root: Path) -> Path | None:
    runs = [p for p in run_root.iterdir() if not p.is_symlink() and (p / "config.yaml").is_file()] \
        if run_root.is_dir() else []
    return runs[0] if runs else None


def _train(config_path: Path, log, resume: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "cluster.cli", "train", str(config_path)]
    if resume is not None:
        command += ["--resume", str(resume)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=Path(__file__).resolve().parent.parent)


def _target(driver: psutil.Process, kind: str) -> psutil.Process | None:
    for child in driver.children(recursive=True):
        try:
            if child.name().startswith(TARGETS[kind]) or TARGETS[kind] in " ".join(child.cmdline()[:1]):
                return child
        except psutil.Error:
            continue
    return None


def _wait_for_step(process: subprocess.Popen, run_root: Path, step: int, deadline: float) -> Path:
    while time.monotonic() < deadline:
        run_dir = _run_dir(run_root)
        if any(r.get("step", 0) >= step and "reward_mean" in r for r in _records(run_dir)):
            return run_dir
        if process.poll() is not None:
            raise RuntimeError(f"the run exited ({process.returncode}) before step {step}")
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


def _checkpoint_step(run_dir: Path) -> int:
    """The step of the run's newest complete checkpoint (DeepSpeed names it in `latest` once it is
    written); 0 if there is none."""
    latest = run_dir / "checkpoints" / "latest"
    return int(latest.read_text().strip().removeprefix("step")) if latest.is_file() else 0


def _rewound_to(step: int, before: list[dict], now: list[dict]) -> bool:
    """Whether the run went back to `step`: of the records written before the kill, those of the steps up
    to it are still there and those of later steps were written anew (a record is known by its wall_s)."""
    kept = {(r["step"], r.get("wall_s")) for r in now}
    return all(((r["step"], r.get("wall_s")) in kept) == (r["step"] <= step) for r in before)


def _recovered(kind: str, run_dir: Path, before: list[dict], num_workers: int, num_shards: int,
               checkpoint_step: int | None = None) -> bool:
    """Whether the run trained a step beyond every step recorded before the kill (`before`), and, for
    the kind killed: a worker was replaced, every shard is up again, the learner went back to
    `checkpoint_step` (the newest checkpoint when it was killed) and redid the steps since."""
    records = _records(run_dir)
    after_step = max(r.get("step", 0) for r in before)
    later = [r for r in records if r.get("step", 0) > after_step and "reward_mean" in r]
    if kind == "worker":
        return any(r.get("workers/restarts", 0) >= 1 and r.get("workers/alive", 0) == num_workers for r in later)
    if kind == "shard":
        return any(r.get("replay/shards_up", 0) == num_shards for r in later)
    if kind == "learner":
        return bool(later) and checkpoint_step is not None and _rewound_to(checkpoint_step, before, records)
    return bool(later)


def _ledger(run_dir: Path) -> dict:
    from buffer import ReplayClient
    from cluster.run_shards import RunShards

    with RunShards.open(run_dir) as shards, ReplayClient.observer(shards.urls, shards.namespace,
                                                                  shards.password) as client:
        return client.audit().to_dict()


def run_with_fault(kind: str, steps: int, kill_step: int, seed: int, root: Path) -> FaultRun:
    """One run of the demo in which `kind` is killed with SIGKILL once step `kill_step` was recorded."""
    result = FaultRun(kind, kill_step)
    run_root = root / f"{kind}-{seed}"
    run_root.mkdir(parents=True)
    config_path = run_root / "config.yaml"
    config = run_config(steps, run_root, seed)
    config_path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    deadline = started + RUN_TIMEOUT_S
    with (run_root / "train.log").open("w") as log:
        process = _train(config_path, log)
        try:
            run_dir = _wait_for_step(process, run_root, kill_step, deadline)
            if kind == CONTROL:
                process.wait(timeout=max(deadline - time.monotonic(), 1))
                return _finished(result, process, run_dir, steps, started)
            driver = psutil.Process(process.pid)
            victim = driver if kind == "driver" else _target(driver, kind)
            if victim is None:
                raise RuntimeError(f"no {kind} process found to kill")
            left_behind = [p for p in driver.children(recursive=True)] if kind == "driver" else []
            victim.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            # Recovered: a step beyond every step recorded before the kill (a restored learner
            # first redoes the steps since its checkpoint, the newest when it died).
            before = _records(run_dir)
            if kind == "learner":
                result.restored_from = _checkpoint_step(run_dir)
            if kind == "driver":
                process.wait(timeout=30)
                process = _train(config_path, log, resume=run_dir)
                time.sleep(15)  # the resumed run reaps the dead driver's processes first thing
                result.leftover_after_resume = sum(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                                   for p in left_behind)
            while time.monotonic() < deadline and process.poll() is None:
                if result.recover_s is None and _recovered(kind, run_dir, before, 2, 2, result.restored_from):
                    result.recover_s = time.monotonic() - killed_at
                time.sleep(0.2)
            process.wait(timeout=max(deadline - time.monotonic(), 1))
            if result.recover_s is None and _recovered(kind, run_dir, before, 2, 2, result.restored_from):
                result.recover_s = time.monotonic() - killed_at
            return _finished(result, process, run_dir, steps, started)
        except Exception as e:  # a failed run is a result of the benchmark, not its end
            result.error = f"{type(e).__name__}: {e}"
            os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
        result.wall_s = time.monotonic() - started
    return result


def _finished(result: FaultRun, process: subprocess.Popen, run_dir: Path, steps: int, started: float) -> FaultRun:
    """What the ended run left: exit code, evaluations, duplicate steps, restarts, the ledger."""
    records = _records(run_dir)
    result.exit_code = process.returncode
    result.completed = result.exit_code == 0 and max(r.get("step", 0) for r in records) == steps
    evals = [r["eval_accuracy"] for r in records if "eval_accuracy" in r]
    result.first_eval, result.last_eval = (evals[0], evals[-1]) if evals else (None, None)
    steps_seen = [r["step"] for r in records]
    result.duplicate_steps = len(steps_seen) - len(set(steps_seen))
    result.worker_restarts = int(max((r.get("workers/restarts", 0) for r in records), default=0))
    result.ledger = _ledger(run_dir)
    result.wall_s = time.monotonic() - started
    return result


def summarize(results: list[FaultRun]) -> list[dict]:
    rows = []
    for kind in (*KINDS, CONTROL):
        runs = [r for r in results if r.kind == kind]
        if not runs:
            continue
        recovered = [r.recover_s for r in runs if r.recover_s is not None]
        learned = [r.learned for r in runs if r.learned is not None]
        rows.append({
            "fault": kind, "injected": len(runs), "completed": sum(r.completed for r in runs),
            "recover_s_median": sorted(recovered)[len(recovered) // 2] if recovered else None,
            "recover_s_max": max(recovered, default=None),
            "learned_min": min(learned, default=None),
            "acked": sum(r.ledger.get("acked", 0) for r in runs),
            "trained": sum(r.ledger.get("trained_groups", 0) for r in runs),
            "evicted": sum(v for r in runs for k, v in r.ledger.items() if k.startswith("left_")),
            "buffered": sum(r.ledger.get("buffered", 0) for r in runs),
            "unaccounted": sum(r.ledger.get("unaccounted", 0) for r in runs),
            "over_trained": sum(r.ledger.get("over_trained", 0) for r in runs),
            "leftover_processes": sum(r.leftover_after_resume or 0 for r in runs),
            "duplicate_steps": sum(r.duplicate_steps for r in runs),
        })
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fault injection (SIGKILL at a random step)")
    for column in rows[0] if rows else []:
        table.add_column(column, justify="left" if column == "fault" else "right")
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal bench faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="runs of each kind")
    parser.add_argument("--steps", type=int, default=200, help="learner steps per run (200: the whole demo)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}, {CONTROL}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - {*KINDS, CONTROL}
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; valid: {', '.join(KINDS)}, {CONTROL} (nothing killed)")
    rng = random.Random(args.seed)
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="tidal-faults-") as root:
        for rep in range(args.reps):
            for kind in kinds:  # alternating kinds: load from other work hits all alike
                kill_step = rng.randint(args.steps // 5, args.steps // 2)  # room left to show the recovery
                result = run_with_fault(kind, args.steps, kill_step, args.seed + rep, Path(root))
                results.append(result)
                print(f"faults: {kind} killed at step {kill_step}: completed={result.completed} "
                      f"recover_s={result.recover_s} learned={result.learned} unaccounted="
                      f"{result.ledger.get('unaccounted')} {result.error}", file=sys.stderr)
    rows = summarize(results)
    report = {"settings": vars(args) | {"out": str(args.out)}, "total_s": time.time() - started,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "summary": rows,
              "runs": [asdict(r) | {"learned": r.learned} for r in results]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print_table(rows)
    print(f"total {report['total_s']:.0f}s; wrote {args.out}")
    failed = [r for r in results if not r.completed or r.ledger.get("unaccounted")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
