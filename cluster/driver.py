"""The driver: wires one run, supervises it, and tears it down whatever happens.

Top to bottom: reap what dead runs left behind; check the replay's shards; start Ray, the run's
small actors, the learner ranks and the rollout workers; restore the latest checkpoint when
resuming; evaluate; train (async or sync) with periodic checkpoints; evaluate and save.

Faults it survives: a rollout worker that dies is replaced (worker_pool.py); a learner rank that
dies makes every rank restart from the latest checkpoint (learner_group.py), which the replay,
the weight channel and the metrics rewind to; SIGTERM / SIGINT write a final checkpoint and say
how to resume. A learner step that does not complete within the watchdog's time stops the run,
naming what stalled.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import ray
import transformers
from ray.util.placement_group import remove_placement_group
import yaml

from actors.rollout_worker import RemoteRolloutWorker
from buffer import RateLimiterTimeout, ReplayClient, ReplayConfig, check_shards, create_table
from buffer.stats import PER_SHARD_KEY
from cluster.admission import RemoteAdmissionController
from cluster.checkpoints import CheckpointPolicy
from cluster.config import RunConfig
from cluster.control import RunStatus, start_controller
from cluster.demo_model import build_demo_model
from cluster.errors import RunFailed
from cluster.evaluation import Evaluations
from cluster.game_eval import kuhn_exploitability
from cluster.learner_group import LearnerFailure, LearnerGroup, LearnerStalled
from cluster.metrics import MetricsWriter, plot_rewards
from cluster.placement import PlacementRecord, check_capacity, in_group, ready_group
from cluster.processes import LiveRun, reap_orphans
from cluster.progress import Progress
from cluster.ray_metrics import RunGauges
from cluster.rollout_meter import RolloutMeter
from cluster.run_shards import RunShards
from cluster.scaling import RestartBudget
from cluster.submit import use_cluster_token
from cluster.weight_channel import WeightChannel
from cluster.worker_pool import Worker, WorkerPool, worker_lost
from learner.learner_actor import RemoteLearner

log = logging.getLogger(__name__)

ACTOR_ENV = {  # quiet, single-threaded actors: the cores are shared by every process of the run
    "VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}
CALL_TIMEOUT_S = 60.0
EVAL_TIMEOUT_S = 600.0


@dataclass
class Run:
    """The live parts of a run, for the loop."""

    cfg: RunConfig
    run_dir: Path
    replay_cfg: ReplayConfig
    shards: RunShards
    channel: object
    admission: object  # AdmissionController: how much to generate, and on which categories
    controller: object  # RunController: status for `tidal status`, desired size from `tidal scale`
    replay: ReplayClient  # the driver's own client, for replay statistics
    learners: LearnerGroup
    workers: WorkerPool
    evaluations: Evaluations  # held-out evaluations, running beside training
    writer: MetricsWriter
    progress: Progress
    live: LiveRun
    tokenizer: object  # the model's, for evaluations that build token contexts themselves
    placement: PlacementRecord
    started: float  # time.time() that wall_s counts from (earlier for a resumed run: see resume)

    def note(self, message: str) -> None:
        self.progress.note(message)


def make_run_dir(cfg: RunConfig) -> Path:
    """A new run's directory, holding its whole config (`runs/latest` moves once the run has started)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = cfg.run_root / f"{stamp}-{cfg.name}"
    run_dir.mkdir(parents=True)
    resolved = cfg.model_dump(mode="json", exclude={"replay": {"password"}})  # never a secret on disk
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    return run_dir


def point_latest(run_dir: Path) -> None:
    """`runs/latest` -> this run, once it has started (shards reached, every actor ready): `--resume
    runs/latest` must never pick a run that failed its start-up checks. Such a run keeps its directory
    (its Redis logs say why), under its own name."""
    latest = run_dir.parent / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(run_dir.name)


def resolve_model(cfg: RunConfig, progress: Progress) -> str:
    if cfg.model.path is not None:
        return str(cfg.model.path)
    progress.note("building the demo model (cached after the first run)...")
    started = time.time()
    transformers.utils.logging.disable_progress_bar()
    path = build_demo_model(seed=cfg.seed, settings=cfg.model.demo)
    progress.note(f"demo model ready in {time.time() - started:.0f}s: {path}")
    return str(path)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def start_run(cfg: RunConfig, run_dir: Path, stack: ExitStack, progress: Progress, started: float | None = None) -> Run:
    replay_cfg = cfg.replay.model_copy(update={"namespace": run_dir.name})
    if cfg.mode == "sync":  # on-policy: each group is trained on once, in the step after it was made
        replay_cfg = replay_cfg.model_copy(update={"max_times_sampled": 1})
    live = LiveRun(run_dir)
    stack.callback(live.close)
    shards = RunShards.start(replay_cfg, run_dir)
    stack.callback(shards.close)
    check_shards(shards.urls, shards.password)  # named errors within seconds, before anything heavy starts
    create_table(replay_cfg, shards.urls)  # the run owns its table: every other client only reads the settings
    progress.note(f"replay: {len(shards.urls)} Redis shards {shards.urls}")
    model_path = resolve_model(cfg, progress)

    if cfg.ray.address is not None:
        use_cluster_token()
    # The actors' own output (vLLM, DeepSpeed and their warnings) goes to the session's log files, not
    # to this terminal: it shows the run's progress; failures still arrive here as exceptions.
    # Our own instance starts its actors at the driver's priority, not at Ray's default niceness 15:
    # the learner then runs level with Redis and the driver, not below them, and `rollout.nice`
    # puts the workers the steps it names below the learner (from 15 they could only reach 19).
    local = {"num_cpus": cfg.ray.num_cpus, "dashboard_host": cfg.ray.dashboard_host,
             "_metrics_export_port": cfg.ray.metrics_export_port,
             "_system_config": {"worker_niceness": 0}} if cfg.ray.address is None else {}
    context = ray.init(address=cfg.ray.address, include_dashboard=cfg.ray.include_dashboard,
                       runtime_env={"env_vars": ACTOR_ENV}, logging_level=logging.ERROR, log_to_driver=False, **local)
    stack.callback(ray.shutdown)
    session = ray._private.worker._global_node.get_session_dir_path()
    if cfg.ray.address is None:  # our own instance: reaped if we die; a cluster we joined is not ours
        live.set_ray_session(session)
    progress.note(f"actor logs: {session}/logs")
    # After ray.init, which installs a SIGTERM handler that aborts the process: a run stopped with
    # SIGTERM (a job manager, `timeout`, `kill`) must unwind this stack like Ctrl-C does.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if context.dashboard_url:
        progress.note(f"Ray dashboard: http://{context.dashboard_url}")
    node = ray._private.worker._global_node
    progress.note(f"Prometheus metrics: http://{node.node_ip_address}:{node.metrics_export_port}/metrics")

    controller = start_controller(RunStatus(cfg.name, str(run_dir), cfg.steps, cfg.rollout.num_workers),
                                  shards.urls, replay_cfg.namespace,
                                  partial(check_capacity, cfg.placement, num_ranks=cfg.learner.num_ranks))
    replay = ReplayClient(replay_cfg, shards.urls)
    stack.callback(replay.close)
    channel = WeightChannel.remote()

    placement = cfg.placement
    check_capacity(placement, cfg.rollout.num_workers, cfg.learner.num_ranks)
    record = PlacementRecord(run_dir / "placement.json")
    learner_group = ready_group([placement.learner.request()] * cfg.learner.num_ranks, placement.learner_strategy,
                                placement.timeout_s, f"{cfg.learner.num_ranks} learner rank(s)")
    stack.callback(remove_placement_group, learner_group)

    def make_rank(rank: int):
        resources = placement.learner
        return RemoteLearner.options(name=f"learner-{rank}", num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                     resources=resources.resources, **in_group(learner_group, rank)).remote(
            rank, cfg.learner.num_ranks, model_path, cfg.learner, cfg.loss, replay_cfg, shards.urls, channel,
            cfg.steps, cfg.weights)

    engine_groups: dict[int, object] = {}  # slot -> its tensor-parallel engine's placement group

    def start_worker(slot: int, name: str):
        options = {"num_cpus": placement.rollout.num_cpus, "num_gpus": placement.rollout.num_gpus,
                   "resources": placement.rollout.resources}
        rollout = cfg.rollout
        if placement.tensor_parallel_size > 1:  # the engine's shards in one group; the worker in its first bundle
            if slot not in engine_groups:
                engine_groups[slot] = ready_group(placement.worker_bundles(), "PACK", placement.timeout_s,
                                                  f"rollout worker {slot}'s {placement.tensor_parallel_size} GPUs")
                stack.callback(remove_placement_group, engine_groups[slot])
            options |= {"num_gpus": 1.0} | in_group(engine_groups[slot], 0)
            rollout = rollout.model_copy(update={"engine": rollout.engine.model_copy(update={"vllm": {
                **rollout.engine.vllm, "tensor_parallel_size": placement.tensor_parallel_size,
                "distributed_executor_backend": "ray"}})})
        return RemoteRolloutWorker.options(max_concurrency=4, **options).remote(
            name, model_path, rollout, cfg.env, replay_cfg, shards.urls, channel, admission,
            cfg.seed + 1000 * (slot + 1), cfg.weights)

    # The learner ranks first: at start-up they are the longest chain (DeepSpeed and transformers
    # imports), and Ray starts only as many actor processes at a time as the node has CPUs.
    progress.note(f"starting {cfg.learner.num_ranks} learner rank(s) and {cfg.rollout.num_workers} rollout "
                  f"workers ({cfg.rollout.engine.kind} engines)...")
    categories = cfg.env.build_task_source().categories  # a bad task source fails before any actor starts
    learners = LearnerGroup(make_rank, cfg.learner.num_ranks, run_dir / "checkpoints", cfg.checkpoint)
    learners.launch()
    stack.callback(learners.kill)
    admission = RemoteAdmissionController.remote(cfg.learner.groups_per_step, cfg.rollout.max_staleness,
                                                 cfg.curriculum, categories, cfg.seed, replay)
    workers = WorkerPool(start_worker, admission, cfg.mode == "async",
                         RestartBudget(cfg.faults.worker_restarts, cfg.faults.worker_restart_window_s),
                         on_ready=lambda w: record.add("rollout", w.name, w.handle, placement.rollout.request()),
                         on_gone=lambda w: (record.ended(w.name), channel.peer_gone.remote(w.name)))
    workers.start(cfg.rollout.num_workers)
    stack.callback(workers.stop_all, CALL_TIMEOUT_S)
    learners.join()
    record_learners(record, learners, placement)
    for note in workers.wait_ready(cfg.faults.start_timeout_s):
        progress.note(note)
    live.refresh(force=True)
    writer = MetricsWriter(run_dir)
    stack.callback(writer.close)
    return Run(cfg, run_dir, replay_cfg, shards, channel, admission, controller, replay, learners, workers,
               Evaluations(cfg, workers, EVAL_TIMEOUT_S), writer, progress, live,
               transformers.AutoTokenizer.from_pretrained(model_path), record, started or time.time())


def record_learners(record: PlacementRecord, learners: LearnerGroup, placement) -> None:
    for rank, handle in enumerate(learners.ranks):
        record.add("learner", f"learner-{rank}.{learners.restarts}", handle, placement.learner.request())


# -- the loop's parts ---------------------------------------------------------------------------
def evaluate(run: Run) -> dict:
    """An evaluation at the newest weights, waited for (a run's first; tests)."""
    run.evaluations.start("the start")
    return run.evaluations.wait() | learner_measures(run)


def learner_measures(run: Run) -> dict:
    """The evaluations that read the learner's weights (they need it idle, at the step just made)."""
    if not run.cfg.eval.kuhn_exploitability:
        return {}
    return kuhn_exploitability(run.tokenizer, lambda contexts, candidates: run.learners.call_rank0(
        "next_token_probabilities", contexts, candidates))


def produce_on_policy(run: Run, num_groups: int) -> None:
    """Sync mode: the ready workers load the newest weights, then fill the replay with one batch of
    groups that carry a learning signal. A worker lost meanwhile (process dead, or engine thread
    ended) is replaced and its share made by the others; its replacement joins once warmed up."""
    missing = num_groups
    for _ in range(3):
        syncs = [(w, w.handle.sync_weights.remote()) for w in _free_workers(run)]
        workers = [w for w, ref in syncs if _answered(run, w, ref, CALL_TIMEOUT_S)]
        if not workers:  # every one was lost while loading: the next attempt waits for their replacements
            continue
        shares = [missing // len(workers) + (i < missing % len(workers)) for i in range(len(workers))]
        calls = [(w, k, w.handle.produce.remote(k)) for w, k in zip(workers, shares) if k]
        missing -= sum(k for w, k, ref in calls if _answered(run, w, ref, run.cfg.faults.watchdog_s))
        if missing <= 0:
            return
    raise RunFailed(f"sync mode: {missing} of {num_groups} groups could not be produced after 3 attempts")


def _free_workers(run: Run) -> list[Worker]:
    """The ready workers that run no evaluation (one that does loads no new weights until it ends);
    if every ready worker runs one, this waits for one to end."""
    while True:
        for note in run.workers.wait_for_one_ready(run.cfg.faults.start_timeout_s):
            run.note(note)
        busy = run.evaluations.busy()
        free = [w for w in run.workers.ready if w not in busy]
        if free:
            return free
        run.evaluations.wait_for_a_worker()


def _answered(run: Run, worker: Worker, ref, timeout_s: float) -> bool:
    """Whether the worker's call ended well; a worker lost in it is replaced before this returns."""
    try:
        ray.get(ref, timeout=timeout_s)
        return True
    except ray.exceptions.GetTimeoutError as e:  # alive but stuck: no other worker would do better
        raise RunFailed(f"rollout worker {worker.name} did not answer within {timeout_s:.0f}s") from e
    except ray.exceptions.RayError as e:
        if not worker_lost(e):
            raise
        run.note(run.workers.replace_dead(worker, e))
        return False


def supervise_workers(run: Run) -> None:
    """Replace dead workers and note it; a pool that cannot go on (a crash loop, prompts no worker
    can fit) stops the run."""
    for note in run.workers.check():
        run.note(note)


def learner_step(run: Run) -> dict:
    """One update, with the watchdog's bound. A learner that waited for groups in vain, or a step
    that stalled, stops the run with what each part was doing."""
    try:
        return run.learners.step(run.cfg.faults.watchdog_s, while_waiting=lambda: supervise_workers(run))
    except ray.exceptions.RayTaskError as e:
        if not isinstance(e.cause, RateLimiterTimeout):
            raise
        raise RunFailed(f"the learner got no groups to train on: {e.cause}; {_fleet_state(run)}") from e
    except LearnerStalled as e:
        raise RunFailed(f"no learner step completed within {run.cfg.faults.watchdog_s:.0f}s: {e}; "
                        f"{_fleet_state(run)}") from e


def _fleet_state(run: Run) -> str:
    counts = run.workers.counts()
    errors = "; ".join(f"{name}: {why}" for name, why in list(run.workers.last_errors.items())[-3:])
    try:
        size = run.replay.size()
    except Exception as e:  # the diagnosis of a failure must not fail itself
        size = f"unknown ({type(e).__name__})"
    try:
        episodes = episode_failures(run.workers.stats())
    except Exception as e:
        episodes = f"episode failures unknown ({type(e).__name__})"
    return (f"replay size {size}; rollout workers: {counts['workers/alive']} ready, "
            f"{counts['workers/starting']} starting, {counts['workers/restarts']} restarts"
            + (f"; last worker errors: {errors}" if errors else "") + (f"; {episodes}" if episodes else ""))


def episode_failures(stats: list[dict]) -> str:
    """The workers' failed episodes, by env and reason, with one failure's message: why no groups came
    may be there (a prompt over the token budget, an env that raises), not in the workers' state."""
    counts: Counter[str] = Counter()
    for report in stats:
        counts.update(report.get("episode_errors", {}))
    parts = [f"{reason} x{count}" for reason, count in counts.most_common()]
    example = next((r["last_episode_error"] for r in stats if r.get("last_episode_error")), None)
    if example:
        parts.append(f"e.g. {example}")
    return f"failed episodes: {', '.join(parts)}" if parts else ""


def recover_learners(run: Run, failure: LearnerFailure, resume_hint: str) -> int:
    """Restart every learner rank from the latest checkpoint; returns the step it holds."""
    if run.learners.restarts >= run.cfg.faults.learner_restarts:
        raise RunFailed(f"{failure}, and the learner was restarted {run.learners.restarts} times already; "
                        f"resume with: {resume_hint}") from failure
    run.note(f"{failure}: restarting every learner rank from the latest checkpoint")
    for entry in [e for e in run.placement.live() if e["role"] == "learner"]:
        run.placement.ended(entry["name"])
    run.learners.restart()
    record_learners(run.placement, run.learners, run.cfg.placement)
    return restore(run)


def restore(run: Run) -> int:
    """Load the latest checkpoint into the learners (after a failure, or to resume) and bring the run
    back to it: the replay drops what was made after it (evicted as `rewound`), the workers load its
    weights, the metrics and the curriculum go back to it. Returns its step."""
    state = run.learners.restore()
    driver = state.get("driver", {})
    if "admission" in driver:
        ray.get(run.admission.load_state.remote(driver["admission"]), timeout=CALL_TIMEOUT_S)
    step = int(driver.get("step", 0))
    run.writer.rewind(step)
    run.note(f"restored step {step} (policy version {state['policy_version']})")
    return step


def resume(run: Run) -> int:
    """`restore` for a resumed run, whose clock then goes on from its last record kept: its wall_s
    keep growing across the restart (the time the run was down is not counted)."""
    step = restore(run)
    run.started -= max((r["wall_s"] for r in run.writer.records if "wall_s" in r), default=0.0)
    return step


def checkpoint(run: Run, step: int) -> float:
    state = {"step": step, "admission": ray.get(run.admission.state.remote(), timeout=CALL_TIMEOUT_S)}
    return run.learners.save(step, state)


def rescale(run: Run) -> None:
    """Apply `tidal scale`: workers are added without waiting for their warm-up."""
    desired = ray.get(run.controller.desired_workers.remote(), timeout=CALL_TIMEOUT_S)
    before = len(run.workers.workers)
    if run.workers.resize(desired):
        run.note(f"rollout workers: {before} -> {desired} (new ones join when warmed up)")


def step_record(run: Run, step: int, learner: dict, meter: RolloutMeter) -> tuple[dict, dict]:
    # The admission calls go out first and are collected last: they run while the workers and the
    # replay are asked (the actor runs them in order, so totals still precede the curriculum update).
    trained = {key[len("signal/"):]: (value, learner.get(f"signal_groups/{key[len('signal/'):]}", 0.0))
               for key, value in learner.items() if key.startswith("signal/")}
    admitted_ref = run.admission.totals.remote()
    probabilities_ref = run.admission.update_curriculum.remote(trained)
    record = {"step": step, **learner}
    meter.update(run.workers.stats())
    record |= meter.record() | run.workers.counts()
    replay = run.replay.stats().to_dict()
    record |= {k: v for k, v in replay.items() if not PER_SHARD_KEY.match(k)}  # service totals, not per shard
    admitted, probabilities = ray.get([admitted_ref, probabilities_ref], timeout=CALL_TIMEOUT_S)
    record |= {f"admission/{k}": v for k, v in admitted.items()}
    record |= {f"curriculum/p/{category}": p for category, p in probabilities.items()}
    return record, replay


def train_loop(run: Run, step: int, resume_hint: str) -> int:
    cfg = run.cfg
    first = {"step": step, "wall_s": time.time() - run.started, "policy_version": step, **evaluate(run)}
    run.writer.write(first)
    show_evaluation(run, first)
    meter = RolloutMeter()
    gauges = RunGauges(cfg.name)
    policy = CheckpointPolicy(cfg.checkpoint)
    policy.saved(step)
    while step < cfg.steps:
        supervise_workers(run)
        for note in run.shards.revive():
            run.note(note)
        if cfg.mode == "sync":
            produce_on_policy(run, cfg.learner.groups_per_step)
        try:
            learner = learner_step(run)
        except LearnerFailure as failure:
            run.evaluations.discard()  # of weights the run is going back from
            step = recover_learners(run, failure, resume_hint)
            policy.saved(step)
            continue
        step += 1
        evaluating = bool(cfg.eval.every) and (step % cfg.eval.every == 0 or step == cfg.steps)
        saving = policy.due(step) or step == cfg.steps
        # The evaluation runs on a worker while training goes on; it is recorded when it ends.
        evaluation = run.evaluations.start(f"step {step}") if evaluating else run.evaluations.poll()
        if cfg.mode == "async" and not (saving or (evaluating and cfg.eval.kuhn_exploitability)):
            # The next update runs while this one is recorded. Not when this step checkpoints or the
            # learner's weights are evaluated: those must see this step's weights.
            run.learners.begin_step()
        record, replay = step_record(run, step, learner, meter)
        record |= evaluation | (learner_measures(run) if evaluating else {})
        if step == cfg.steps:  # the last record holds the final evaluation
            show_evaluation(run, record)
            record |= run.evaluations.wait()
        show_evaluation(run, record)
        if saving:
            record["time/checkpoint_s"] = checkpoint(run, step)
            policy.saved(step)
        record["wall_s"] = time.time() - run.started
        run.writer.write(record)
        run.progress.stepped(record)
        gauges.publish(record, replay, meter.per_worker())
        run.controller.report.remote(record, len(run.workers.ready), replay, run.placement.live())
        run.live.refresh()
        rescale(run)
    return step


def show_evaluation(run: Run, record: dict) -> None:
    """A line for the evaluation in `record`, if it holds one, named by the version it measured."""
    if any(key.startswith("eval_") for key in record):
        run.progress.evaluated(record.get("eval_policy_version", record["step"]), record)


def _save_on_the_way_out(run: Run, step: int, resume_hint: str) -> None:
    """Preemption: a final checkpoint, within its bound, and how to resume."""
    bound = run.cfg.checkpoint.timeout_s
    run.note(f"stopping: finishing the update in flight and saving a checkpoint (at most {bound:.0f}s each)...")
    try:
        learner = run.learners.settle(bound)
    except Exception as e:  # e.g. an update starved of groups: the checkpoint must not wait on it, nor be lost with it
        run.learners.drop_in_flight()
        learner = None
        run.note(f"the update in flight did not finish ({type(e).__name__}: {e}); checkpointing without its record")
    try:
        if learner is not None:  # an update begun before the interrupt: it is a step, and it is recorded
            step += 1
            run.writer.write({"step": step, **learner, "wall_s": time.time() - run.started})
        checkpoint(run, step)
        run.note(f"checkpoint of step {step} saved in {run.learners.checkpoint_dir}; resume with: {resume_hint}")
    except Exception as e:  # the run is ending anyway: report, then let the interrupt through
        run.note(f"the final checkpoint failed ({type(e).__name__}: {e}); the latest periodic one stays; "
                 f"resume with: {resume_hint}")


def train(cfg: RunConfig, resume_dir: Path | None = None) -> Path:
    """Run `cfg` to completion, or continue the run in `resume_dir` (same directory, replay and
    version numbering) from its latest checkpoint; returns the run directory."""
    for line in reap_orphans():
        log.warning(line)
    # Resolved: runs/latest is a link, and the run's replay namespace is its directory's own name.
    run_dir = resume_dir.resolve() if resume_dir is not None else make_run_dir(cfg)
    resume_hint = f"tidal train --resume {run_dir}"  # the run directory holds its whole config
    started = time.time()
    with ExitStack() as stack, Progress(cfg.steps) as progress:
        progress.note(f"run directory: {run_dir}")
        run = start_run(cfg, run_dir, stack, progress, started)
        if resume_dir is None:
            point_latest(run_dir)
        # A resumed run goes back to its latest checkpoint; one that died before its first goes back to
        # step 0 with the model it started from, keeping the replay's groups of that version.
        step = resume(run) if resume_dir is not None else 0
        try:
            step = train_loop(run, step, resume_hint)
        except (KeyboardInterrupt, SystemExit):
            _save_on_the_way_out(run, max(step, _last_step(run)), resume_hint)
            raise
        finally:
            plot_rewards(run.writer.records, run_dir / "reward.png", f"Tidal {cfg.name} ({cfg.mode})")
        run.learners.call_rank0("export_hf", str(run_dir / "hf"))
        progress.note(f"done in {time.time() - run.started:.0f}s; metrics {run_dir / 'metrics.jsonl'}, "
                      f"plot {run_dir / 'reward.png'}")
    return run_dir


def _last_step(run: Run) -> int:
    return max((r["step"] for r in run.writer.records), default=0)
