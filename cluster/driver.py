"""The driver: wires one run (model, Redis shards, Ray, weight channel, learner, rollout workers),
runs the loop and tears everything down, whatever happens.

Top to bottom: set up, evaluate the starting policy, train (async or sync), evaluate, save.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable
from pathlib import Path

import ray
import yaml

from actors.rollout_worker import RemoteRolloutWorker
from buffer import ReplayClient, start_local_shards, stop_local_shards
from cluster.admission import RemoteAdmissionController
from cluster.config import ConfigError, RunConfig
from cluster.control import RunStatus, start_controller
from cluster.demo_model import build_demo_model
from cluster.metrics import MetricsWriter, plot_rewards
from cluster.progress import Progress
from cluster.scaling import reconcile_workers
from cluster.weight_channel import WeightChannel
from learner.learner_actor import RemoteLearner

log = logging.getLogger(__name__)

ACTOR_ENV = {  # quiet, single-threaded actors: the cores are shared by every process of the run
    "VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


@dataclass
class Cluster:
    """The live parts of a run, for the loop."""

    channel: object
    admission: object  # AdmissionController: how much to generate, and on which categories
    controller: object  # RunController: status for `tidal status`, desired size from `tidal scale`
    replay: ReplayClient  # the driver's own client, for replay statistics
    learners: list
    workers: list
    start_worker: Callable[[int], object]  # index -> a started RolloutWorker handle
    worker_loops: dict = field(default_factory=dict)  # worker handle -> ref of its run() loop (async mode)


def make_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = cfg.run_root / f"{stamp}-{cfg.name}"
    run_dir.mkdir(parents=True)
    latest = cfg.run_root / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(run_dir.name)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return run_dir


def resolve_model(cfg: RunConfig, progress: Progress) -> str:
    if cfg.model.path is not None:
        return str(cfg.model.path)
    progress.note("building the demo model (cached after the first run)...")
    started = time.time()
    path = build_demo_model(seed=cfg.seed, settings=cfg.model.demo)
    progress.note(f"demo model ready in {time.time() - started:.0f}s: {path}")
    return str(path)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(cfg: RunConfig, model_path: str, run_dir: Path, stack: ExitStack, progress: Progress) -> Cluster:
    replay_cfg = cfg.replay.model_copy(update={"namespace": run_dir.name})
    if cfg.mode == "sync":  # on-policy: each group is trained on once, in the step after it was made
        replay_cfg = replay_cfg.model_copy(update={"max_times_sampled": 1})
    shard_urls = list(cfg.replay.shard_urls)
    if not shard_urls:
        shards = start_local_shards(cfg.replay.num_shards, run_dir / "replay", cfg.replay.fsync,
                                    cfg.replay.password.get_secret_value() if cfg.replay.password else None)
        stack.callback(stop_local_shards, shards)
        shard_urls = [s.url for s in shards]
    progress.note(f"replay: {len(shard_urls)} Redis shards {shard_urls}")

    context = ray.init(address=cfg.ray.address, num_cpus=cfg.ray.num_cpus if cfg.ray.address is None else None,
                       include_dashboard=cfg.ray.include_dashboard, runtime_env={"env_vars": ACTOR_ENV},
                       logging_level=logging.WARNING)
    stack.callback(ray.shutdown)
    # After ray.init, which installs a SIGTERM handler that aborts the process: a run stopped with
    # SIGTERM (a job manager, `timeout`, `kill`) must unwind this stack like Ctrl-C does.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if context.dashboard_url:
        progress.note(f"Ray dashboard: http://{context.dashboard_url}")

    controller = start_controller(RunStatus(cfg.name, str(run_dir), cfg.steps, cfg.rollout.num_workers),
                                  replay_cfg, shard_urls)
    replay = ReplayClient(replay_cfg, shard_urls)
    stack.callback(replay.close)
    channel = WeightChannel.remote()
    admission = RemoteAdmissionController.remote(cfg.learner.groups_per_step, cfg.rollout.max_staleness,
                                                 cfg.curriculum, cfg.env.build_task_source().categories, cfg.seed)
    port = _free_port()
    learners = [
        RemoteLearner.options(num_cpus=1, name=f"learner-{rank}").remote(
            rank, cfg.learner.num_ranks, "127.0.0.1", port, model_path, cfg.learner, cfg.loss, replay_cfg,
            shard_urls, channel, cfg.steps, checkpoint_dir=str(run_dir / "checkpoints"))
        for rank in range(cfg.learner.num_ranks)
    ]

    def start_worker(index: int):
        return RemoteRolloutWorker.options(num_cpus=cfg.rollout.cpus_per_worker, max_concurrency=4).remote(
            index, model_path, cfg.rollout, cfg.env, replay_cfg, shard_urls, channel, admission,
            cfg.seed + 1000 * (index + 1))

    workers = [start_worker(i) for i in range(cfg.rollout.num_workers)]
    progress.note(f"starting {len(learners)} learner rank(s) and {len(workers)} rollout workers (vLLM warm-up)...")
    ray.get([w.stats.remote() for w in workers] + [l.groups_for_this_rank.remote() for l in learners])
    return Cluster(channel=channel, admission=admission, controller=controller, replay=replay, learners=learners,
                   workers=workers, start_worker=start_worker)


def evaluate(cluster: Cluster) -> dict:
    """The env's own measures on its held-out set at the latest weights: sampled (T=1, pass@1) as
    `eval_<measure>` and greedy as `eval_<measure>_greedy`."""
    evaluator = cluster.workers[0]
    results = ray.get(evaluator.evaluate.remote((1.0, 0.0)))
    record = {"eval_policy_version": results["policy_version"]}
    for temperature, suffix in (("1.0", ""), ("0.0", "_greedy")):
        record |= {f"eval_{name}{suffix}": value for name, value in results[temperature].items()}
    return record


SUMMED_OVER_RANKS = ("learner_tokens_per_s", "groups")  # per-rank counts; everything else is already global


def learner_step(cluster: Cluster) -> dict:
    per_rank = ray.get([l.train_step.remote() for l in cluster.learners])
    merged = {}
    for key, value in per_rank[0].items():
        if isinstance(value, (int, float)):
            total = sum(m[key] for m in per_rank)
            merged[key] = total if key in SUMMED_OVER_RANKS else total / len(per_rank)
    return merged


def produce_on_policy(cluster: Cluster, num_groups: int) -> None:
    """Sync mode: every worker loads the newest weights, then the workers fill the replay with one
    batch of groups that carry a learning signal (zero-signal groups are not stored)."""
    ray.get([w.sync_weights.remote() for w in cluster.workers])
    n = len(cluster.workers)
    shares = [num_groups // n + (i < num_groups % n) for i in range(n)]
    ray.get([w.produce.remote(k) for w, k in zip(cluster.workers, shares) if k])


class RolloutMeter:
    """Rollout throughput from the workers' counters, between two calls."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (after the set of workers changed)."""
        self.last = self._totals(), time.time()

    def _totals(self) -> tuple[float, float]:
        stats = ray.get([w.stats.remote() for w in self.cluster.workers])
        return sum(s.get("groups", 0) for s in stats), sum(s.get("generated_tokens", 0) for s in stats)

    def rates(self) -> dict:
        (groups, tokens), now = self._totals(), time.time()
        (last_groups, last_tokens), last_time = self.last
        self.last = (groups, tokens), now
        elapsed = max(now - last_time, 1e-9)
        return {"groups_per_s": (groups - last_groups) / elapsed, "rollout_tokens_per_s": (tokens - last_tokens) / elapsed}


def train_loop(cfg: RunConfig, cluster: Cluster, writer: MetricsWriter, progress: Progress, started: float,
               first_step: int = 1) -> None:
    first_eval = evaluate(cluster)
    writer.write({"step": first_step - 1, "wall_s": time.time() - started, "policy_version": first_step - 1, **first_eval})
    progress.evaluated(first_step - 1, first_eval)
    if cfg.mode == "async":
        cluster.worker_loops = {w: w.run.remote() for w in cluster.workers}
    meter = RolloutMeter(cluster)
    for step in range(first_step, cfg.steps + 1):
        if cfg.mode == "sync":
            produce_on_policy(cluster, cfg.learner.groups_per_step)
        record = {"step": step, **learner_step(cluster), **meter.rates()}
        if cfg.eval.every and (step % cfg.eval.every == 0 or step == cfg.steps):
            record.update(evaluate(cluster))
            progress.evaluated(step, record)
        replay = cluster.replay.stats().to_dict()
        record.update({k: v for k, v in replay.items() if k.count("/") == 1})  # service totals, not per shard
        record["wall_s"] = time.time() - started
        writer.write(record)
        progress.stepped(record)
        cluster.controller.report.remote(record, len(cluster.workers), replay)
        rescale(cfg, cluster, meter, progress)
    _check_worker_loops(cluster)


def rescale(cfg: RunConfig, cluster: Cluster, meter: "RolloutMeter", progress: Progress) -> None:
    """Apply `tidal scale`: start or stop rollout workers to match the controller's desired count."""
    desired = ray.get(cluster.controller.desired_workers.remote())
    if desired == len(cluster.workers):
        return
    before = set(cluster.workers)

    def start(index: int):
        worker = cluster.start_worker(index)
        if cfg.mode == "async":
            cluster.worker_loops[worker] = worker.run.remote()
        return worker

    cluster.workers = reconcile_workers(cluster.workers, desired, start, lambda w: w.stop.remote())
    for gone in before - set(cluster.workers):
        loop = cluster.worker_loops.pop(gone, None)
        if loop is not None:  # let its last round finish and be inserted, then free its engine
            ray.wait([loop], timeout=120)
        ray.kill(gone, no_restart=True)
    meter.reset()
    progress.note(f"rollout workers: {len(before)} -> {len(cluster.workers)}")


def _check_worker_loops(cluster: Cluster) -> None:
    """Surface a worker loop that died with an error instead of letting it pass silently."""
    loops = list(cluster.worker_loops.values())
    ready, _ = ray.wait(loops, num_returns=len(loops), timeout=0)
    for ref in ready:
        ray.get(ref)  # re-raises the worker's exception


def resume(cluster: Cluster, run_dir: Path) -> int:
    """Load the latest checkpoint into every learner rank and publish it; returns its policy version."""
    checkpoints = run_dir / "checkpoints"
    if not (checkpoints / "latest").is_file():
        raise ConfigError(f"--resume {run_dir}: no checkpoint under {checkpoints}")
    version = ray.get([l.load_checkpoint.remote(str(checkpoints)) for l in cluster.learners])[0]
    ray.get([l.publish.remote() for l in cluster.learners])
    return version


def train(cfg: RunConfig, resume_dir: Path | None = None) -> Path:
    """Run `cfg` to completion, or continue the run in `resume_dir` (same directory, replay and
    version numbering) from its latest checkpoint; returns the run directory."""
    started = time.time()
    run_dir = resume_dir if resume_dir is not None else make_run_dir(cfg)
    with ExitStack() as stack, Progress(cfg.steps) as progress:
        progress.note(f"run directory: {run_dir}")
        model_path = resolve_model(cfg, progress)
        cluster = start_cluster(cfg, model_path, run_dir, stack, progress)
        first_step = resume(cluster, run_dir) + 1 if resume_dir is not None else 1
        writer = MetricsWriter(run_dir)
        stack.callback(writer.close)
        stack.callback(lambda: ray.get([w.stop.remote() for w in cluster.workers]))
        try:
            train_loop(cfg, cluster, writer, progress, started, first_step)
        finally:
            plot_rewards(writer.records, run_dir / "reward.png", f"Tidal {cfg.name} ({cfg.mode})")
        ray.get([l.save_checkpoint.remote(str(run_dir / "checkpoints")) for l in cluster.learners])
        ray.get(cluster.learners[0].export_hf.remote(str(run_dir / "hf")))
        progress.note(f"done in {time.time() - started:.0f}s; metrics {run_dir / 'metrics.jsonl'}, plot {run_dir / 'reward.png'}")
    return run_dir
