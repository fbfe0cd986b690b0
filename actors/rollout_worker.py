"""A rollout worker: a Ray actor that owns an inference engine (vLLM or transformers) and turns
tasks into scored groups.

One thread of the worker owns the engine and runs the episode loop; the actor's methods hand it
jobs and wait for their results, each within a bound. In async mode (`run`) the thread keeps
`groups_in_flight` groups generating: it asks the run's admission controller for room (bounded
staleness; the controller also picks each task's category), starts a group per grant, inserts
each group into the replay the moment its last episode ends, and loads newer weights between
engine steps: at once with partial rollouts, after the engine drained otherwise. Sync mode calls
`produce(k)`; `evaluate` (at the newest weights) and `probe` run fixed tasks at fixed weights (loads
wait until they end).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch

from actors.config import EnvConfig, RolloutConfig
from actors.engine import make_engine
from actors.episode import Episode
from actors.episode_loop import EpisodeLoop, GroupRun
from actors.rendering import make_renderer
from actors.sampling import SamplingConfig
from actors.weight_receiver import CollectiveReceiver
from actors.weights import WeightSubscriber
from buffer import Group, ReplayClient, ReplayConfig, learning_signal
from buffer.weight_transport import WeightSyncConfig
from envs import EpisodeErrorCounter, SafeEnv, Task

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 60.0  # actor calls to the run's small control actors (admission)
ADMISSION_RETRY_S = 0.02  # after a refusal, ask again this much later (the loop keeps stepping meanwhile)
PROMPT_CHECK_GROUPS = 8  # a worker stops once this many groups failed with every prompt over the budget, none fitting


class WorkerStopped(RuntimeError):
    """The worker's engine thread ended (stopped, or failed: the message says which)."""


class PromptsOverBudget(WorkerStopped):
    """No prompt the worker tried left room to generate: a setting to change (rollout.engine.max_model_len,
    rollout.limits.max_tokens) that a replacement would run into too, so the pool stops the run with it."""


class PromptBudgetWatch:
    """Stops a worker whose groups all fail with their prompts over the token budget, at once, instead
    of the learner waiting out its sample timeout for groups that never come. Only until a prompt
    fitted: a dataset with a few long prompts is not stopped by them."""

    def __init__(self, worker: str, loop: EpisodeLoop, limit: int = PROMPT_CHECK_GROUPS) -> None:
        self.worker, self.loop, self.limit = worker, loop, limit
        self.over_budget = 0  # groups whose every prompt was over the budget

    @property
    def fits(self) -> bool:
        """A prompt fitted: the watch is over. The loop's word, as soon as a first turn went to the
        engine, not a finished group's: over-budget groups end at once and fitting ones only once
        generated, so with many groups in flight 8 over-budget ones can end before the first fitting
        one does, and would stop a run that trains fine."""
        return self.loop.prompt_fitted

    def saw(self, run: GroupRun) -> None:
        if self.fits or run.over_budget < len(run.episodes):
            return
        self.over_budget += 1
        if self.over_budget >= self.limit:
            raise PromptsOverBudget(f"rollout worker {self.worker}: {self.over_budget} of its tasks had prompts "
                                    f"that left no room to generate, and none has fitted yet: "
                                    f"{run.episodes[0].error}")


@dataclass
class _EpisodesJob:
    """Fixed tasks at fixed weights (evaluation, parity probes): one single-episode group each."""

    requests: list[tuple[Task, SamplingConfig]]
    env: EnvConfig
    future: cf.Future = field(default_factory=cf.Future)
    episodes: dict[int, Episode] = field(default_factory=dict)


def run_nicer(steps: int) -> None:
    """Run this whole process `steps` nicer than it was started (at most 19, the kernel's bound):
    relative, because Ray starts every actor at a niceness of its own (the learner's too), so an
    absolute value could leave the workers level with the learner. Linux keeps a nice value per
    thread, and Ray has started threads of its own in an actor's process before the actor is built:
    each one is set (threads started later inherit the value of the thread that starts them). A
    thread already nicer keeps its value: lowering it needs privileges a user's run does not have."""
    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + steps)
    threads = Path("/proc/self/task")
    for thread_id in [int(t.name) for t in threads.iterdir()] if threads.is_dir() else [0]:
        try:
            if os.getpriority(os.PRIO_PROCESS, thread_id) < target:
                os.setpriority(os.PRIO_PROCESS, thread_id, target)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def _waiter_of(job: tuple[str, object]) -> cf.Future | None:
    """The future a caller waits on for a queued job (None: produce and stop have no waiter)."""
    kind, value = job
    if kind == "episodes":
        return value.future
    return value[1] if kind in ("weights", "quota") else None


class RolloutWorker:
    def __init__(self, name: str, model_path: str, cfg: RolloutConfig, env_cfg: EnvConfig,
                 replay_cfg: ReplayConfig, shard_urls: list[str], channel, admission, seed: int,
                 weights: WeightSyncConfig = WeightSyncConfig()) -> None:
        """`name` must be unique per incarnation: group ids start with it, so they never collide."""
        from transformers import AutoTokenizer

        torch.set_num_threads(1)  # several workers share the machine's cores
        run_nicer(cfg.nice)  # before the engine and the loop start their threads
        self.cfg, self.env_cfg = cfg, env_cfg
        self.name = name
        self.engine = make_engine(model_path, cfg.engine, seed=seed)
        self.errors = EpisodeErrorCounter()
        self._last_episode_error: str | None = None  # an example for the counts in `errors`, in stats()
        self.loop = EpisodeLoop(self.engine, make_renderer(AutoTokenizer.from_pretrained(model_path)), cfg.limits,
                                self.errors)
        self.prompt_watch = PromptBudgetWatch(name, self.loop)
        self.tasks = env_cfg.build_task_source()
        self.replay = ReplayClient(replay_cfg, shard_urls)
        self.channel = channel
        self.weights = WeightSubscriber(channel) if weights.backend == "object_store" else CollectiveReceiver(
            channel, name, weights.bucket_bytes, weights.timeout_s, "nccl" if torch.cuda.is_available() else "gloo")
        self.admission = admission
        self.rng = np.random.default_rng(seed)
        self._jobs: queue.Queue = queue.Queue()
        self._accepting = True  # False once the engine thread ends: jobs are refused, not left queued
        self._post_lock = threading.Lock()
        self._producing = False  # async mode: keep generating, as admitted
        self._quota: tuple[int, cf.Future] | None = None  # sync mode: groups still to store, and who waits
        self._episode_jobs: list[_EpisodesJob] = []
        self._weight_waiters: list[tuple[tuple[int, int], cf.Future]] = []  # (head to reach, who waits)
        self._training_groups = 0
        self._finished: list[GroupRun] = []
        self._next_admission = 0.0
        self._last_weight_sync_s = 0.0
        self._sequence = 0
        self._counters: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._stopped = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name=f"{self.name}-engine", daemon=True)
        self._thread.start()

    # -- the actor's methods: hand a job to the engine thread, wait for it ------------------------
    def run(self) -> dict:
        """Async mode: produce until `stop()`. Returns the final stats; raises what stopped the worker."""
        self._post(("produce", None))
        self._stopped.wait()
        if self._failure is not None:
            raise self._stop_error(f"{self.name}: {type(self._failure).__name__}: {self._failure}")
        return self.stats()

    def produce(self, num_groups: int, timeout_s: float = 600.0) -> int:
        """Sync mode: generate with the current weights until `num_groups` groups are stored."""
        future: cf.Future = cf.Future()
        self._post(("quota", (num_groups, future)))
        return self._wait(future, timeout_s, f"producing {num_groups} groups")

    def sync_weights(self, timeout_s: float = 120.0) -> int:
        """Load the weights published last when this is called, or later ones (after in-flight requests
        finish); returns the version held. Not "the newest when it ends": while an async learner
        publishes every step, that target would move on with every load."""
        future: cf.Future = cf.Future()
        target = tuple(ray.get(self.channel.head.remote(), timeout=CALL_TIMEOUT_S))
        self._post(("weights", (target, future)))
        return self._wait(future, timeout_s, "loading the latest weights")

    def evaluate(self, temperatures: tuple[float, ...] = (1.0, 0.0), env: EnvConfig | None = None,
                 timeout_s: float = 600.0) -> dict:
        """The measures of `env` (default: the training env) on the task source's held-out set,
        averaged per temperature, all at one policy version, the newest published when it starts:
        {"policy_version": v, "episodes": n, "<temperature>": {measure: mean}}."""
        self.sync_weights(timeout_s)
        tasks = self.tasks.eval_tasks()
        samplings = [self.cfg.sampling.model_copy(update={"temperature": t}) for t in temperatures]
        job = _EpisodesJob([(task, sampling) for sampling in samplings for task in tasks], env or self.env_cfg)
        episodes, version = self._episodes(job, timeout_s, "evaluating")
        results = {"policy_version": version, "episodes": len(tasks)}
        for k, temperature in enumerate(temperatures):
            results[str(temperature)] = eval_measures(episodes[k * len(tasks):(k + 1) * len(tasks)])
        return results

    def probe(self, num_tasks: int, timeout_s: float = 120.0) -> list[dict]:
        """Fresh samples of training tasks at the current weights, for checking engine/learner parity."""
        job = _EpisodesJob([(self.tasks.sample(self.rng), self.cfg.sampling) for _ in range(num_tasks)], self.env_cfg)
        episodes, version = self._episodes(job, timeout_s, "probing")
        # Failed episodes are skipped (a failed reset leaves no context); a game has one per player.
        contexts = [c for e in episodes if not e.failed for c in e.roles.values()]
        return [{"token_ids": c.context(), "prompt_len": len(c.prompt_ids), "logprobs": c.logprobs,
                 "loss_mask": c.loss_mask, "policy_version": version} for c in contexts]

    def stop(self, drain_timeout_s: float = 60.0) -> None:
        """Stop admitting; finish and insert the groups in flight (within the bound), then end."""
        self._post(("stop", time.monotonic() + drain_timeout_s))
        self._stopped.wait(drain_timeout_s + 10.0)

    def stats(self) -> dict:
        return {**self._counters, "name": self.name, "policy_version": self.weights.version,
                "weight_sync_last_s": self._last_weight_sync_s,
                "groups_in_flight": self._training_groups, "env_threads_lost": self.loop.calls.lost_threads,
                "episode_errors": self.errors.snapshot(), "last_episode_error": self._last_episode_error}

    def _post(self, job) -> None:
        with self._post_lock:
            if not self._accepting:
                raise self._stop_error(f"{self.name} has stopped" + (f": {self._failure}" if self._failure else ""))
            self._jobs.put(job)

    def _stop_error(self, text: str) -> WorkerStopped:
        """What callers get once the engine thread has ended. A failure that is a WorkerStopped itself
        (PromptsOverBudget) goes as it is: the pool must see its type, not restart the worker."""
        if isinstance(self._failure, WorkerStopped):
            return self._failure
        error = WorkerStopped(text)
        error.__cause__ = self._failure  # as `raise ... from`: the traceback shows the failure
        return error

    def _wait(self, future: cf.Future, timeout_s: float, what: str):
        try:
            return future.result(timeout=timeout_s)
        except cf.TimeoutError as e:
            raise TimeoutError(f"{self.name}: {what} took longer than {timeout_s}s") from e

    def _episodes(self, job: _EpisodesJob, timeout_s: float, what: str) -> tuple[list[Episode], int]:
        self._post(("episodes", job))
        version = self._wait(job.future, timeout_s, what)
        return [job.episodes[i] for i in range(len(job.requests))], version

    # -- the engine thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._take_jobs():
                self._update_weights()
                self._start_groups()
                self.loop.pump(wait_s=0.005)
                self._insert_finished()
        except BaseException as e:  # the worker's own failure: reported by run() and every waiter
            if isinstance(e, PromptsOverBudget):  # a setting to change, not a bug: its message says it all
                log.warning("%s: %s", self.name, e)
            else:
                log.exception("%s: engine thread failed", self.name)
            self._failure = e
        finally:
            self._shutdown()

    def _take_jobs(self) -> bool:
        """Apply the jobs that arrived; True once the worker should end.

        An idle worker blocks here for its next job, but only until one arrives: the jobs behind it
        are taken without waiting, and a worker that owes a `sync_weights` answer never blocks (each
        wait would add its whole timeout to every sync-mode step)."""
        block = self.loop.idle and not (self._producing or self._quota or self._weight_waiters)
        while True:
            try:
                kind, value = self._jobs.get(block=block, timeout=0.05)
            except queue.Empty:
                break
            block = False
            if kind == "produce":
                self._producing = True
            elif kind == "quota":
                self._quota = value
            elif kind == "weights":
                self._weight_waiters.append(value)
            elif kind == "episodes":
                self._start_episodes(value)
            elif kind == "stop":
                self._producing, self._stop_deadline = False, value
                self._stopping.set()
        if self._stopping.is_set():
            return self._training_groups == 0 or time.monotonic() >= self._stop_deadline
        return False

    def _update_weights(self) -> None:
        self._settle_weight_waiters()
        if self._episode_jobs:  # evaluation and probes run at one version: no load until they end
            self.loop.release()
            return
        if not self.weights.newer(force=bool(self._weight_waiters)):
            return
        if not self.cfg.partial or self._weight_waiters:
            self.loop.hold()  # no request mixes two versions: new ones wait until the engine drained
            if not self.loop.engine_drained:
                return
        started = time.monotonic()
        head, state = self.weights.fetch()
        self.engine.load_weights(state.items(), head[1])
        self.weights.loaded(head)
        self.loop.release()
        self._last_weight_sync_s = time.monotonic() - started
        self._counters["weight_loads"] += 1
        self._counters["weight_sync_s"] += self._last_weight_sync_s

    def _settle_weight_waiters(self) -> None:
        """sync_weights() returns once the engine holds the head it asked for, or a later one (a
        collective version may still be on its way: then the waiters wait, within their bound)."""
        served = [(target, waiter) for target, waiter in self._weight_waiters if self.weights.head >= target]
        for entry in served:
            entry[1].set_result(self.weights.version)
            self._weight_waiters.remove(entry)

    def _start_groups(self) -> None:
        room = self.cfg.groups_in_flight - self._training_groups
        if self._quota is not None:
            room = min(room, self._quota[0] - self._training_groups)
        elif not self._producing:
            return
        if room <= 0 or time.monotonic() < self._next_admission:
            return
        categories = ray.get(self.admission.admit.remote(self.name, room), timeout=CALL_TIMEOUT_S)
        if not categories:
            self._next_admission = time.monotonic() + ADMISSION_RETRY_S
        for category in categories:
            task = self.tasks.sample(self.rng, category)
            self._sequence += 1
            self.loop.start(f"{self.name}:{self._sequence}", task, self._envs(self.cfg.group_size),
                            self.cfg.sampling, self._group_finished, inline=self.env_cfg.inline_calls)
            self._training_groups += 1

    def _start_episodes(self, job: _EpisodesJob) -> None:
        self._episode_jobs.append(job)
        self._sequence += 1
        for index, (task, sampling) in enumerate(job.requests):
            def done(run: GroupRun, index=index) -> None:
                job.episodes[index] = run.episodes[0]
                if len(job.episodes) == len(job.requests):
                    self._episode_jobs.remove(job)
                    job.future.set_result(self.weights.version)

            self.loop.start(f"{self.name}:e{self._sequence}:{index}", task, self._envs(1, job.env), sampling, done,
                            inline=job.env.inline_calls)

    def _envs(self, count: int, env: EnvConfig | None = None) -> list[SafeEnv]:
        return [SafeEnv((env or self.env_cfg).build_env(), self.errors) for _ in range(count)]

    def _group_finished(self, run: GroupRun) -> None:
        self._finished.append(run)  # (not a bound list.append: the list is swapped on every insert)

    def _insert_finished(self) -> None:
        if not self._finished:
            return
        runs, self._finished = self._finished, []
        self._training_groups -= len(runs)
        groups = [g for g in map(self._group, runs) if g is not None]
        stored = sum(self.replay.insert_many(groups)) if groups else 0
        self._counters["groups"] += stored
        self._counters["groups_not_stored"] += len(groups) - stored
        zero_signal = Counter(g.category for g in groups if g.priority == 0)  # the curriculum counts these as 0
        ray.get(self.admission.done.remote(self.name, len(runs), stored, dict(zero_signal)), timeout=CALL_TIMEOUT_S)
        if self._quota is not None:
            left, future = self._quota
            self._quota = (left - stored, future)
            if left - stored <= 0 and self._training_groups == 0:
                self._quota = None
                future.set_result(self._counters["groups"])
        for run in runs:  # after the accounting above: a worker that stops here owes no acknowledgement
            self.prompt_watch.saw(run)

    def _group(self, run: GroupRun) -> Group | None:
        """The group of a finished run; episodes that failed (env error, timeout) are left out, and
        a group needs two trajectories left to have a baseline."""
        for episode in run.episodes:
            self._counters[f"finish/{episode.finish_reason}"] += 1
            if episode.failed and episode.error:
                self._last_episode_error = episode.error
        trajectories = [t for e in run.episodes if not e.failed for t in e.trajectories()]
        if len(trajectories) < 2:
            self._counters["dropped_groups"] += 1
            return None
        self._counters["generated_tokens"] += sum(t.num_generated_tokens for t in trajectories)
        rewards = np.array([t.reward for t in trajectories])
        return Group(group_id=run.key, task_id=run.task.task_id, category=run.task.category, created_at=time.time(),
                     trajectories=trajectories, priority=learning_signal(rewards))

    def _shutdown(self) -> None:
        """Every caller still waiting is answered with the reason: those whose jobs the thread took,
        and those whose jobs it never reached (an evaluation queued as the thread failed)."""
        with self._post_lock:
            self._accepting = False
        queued = []
        while not self._jobs.empty():
            queued.append(self._jobs.get_nowait())
        error = self._stop_error(f"{self.name} stopped" + (f": {self._failure}" if self._failure else ""))
        for future in [*(waiter for _, waiter in self._weight_waiters), *(j.future for j in self._episode_jobs),
                       *([self._quota[1]] if self._quota else []), *filter(None, map(_waiter_of, queued))]:
            if not future.done():
                future.set_exception(error)
        self.weights.close()  # a stopped worker registers no more for weights
        self.loop.close()
        self.replay.close()
        self._stopped.set()


def eval_measures(episodes: list[Episode]) -> dict[str, float]:
    """Mean of each measure the env reported (an episode that failed counts as 0 in each), the mean
    return, and the share of failed episodes."""
    names = sorted({name for e in episodes for name in e.metrics})
    measures = {name: float(np.mean([e.metrics.get(name, 0.0) for e in episodes])) for name in names}
    return measures | {"return": float(np.mean([e.reward for e in episodes])),
                       "failed": float(np.mean([e.failed for e in episodes]))}


RemoteRolloutWorker = ray.remote(max_concurrency=4)(RolloutWorker)
