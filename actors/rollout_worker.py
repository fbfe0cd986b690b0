"""A rollout worker: a Ray actor that owns a vLLM engine and turns tasks into scored groups.

Loop (async mode): load newer weights if the learner published any; ask the weight channel for
admission (bounded staleness); generate a round of groups; insert them into the replay. In sync
mode the driver calls `produce` itself. `evaluate` and `stats` run on a second actor thread, so the
engine is guarded by a lock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import numpy as np
import ray
import torch

from actors.config import EnvConfig, RolloutConfig
from actors.engine import VLLMEngine
from actors.episode import Episode, EpisodeRunner
from actors.weights import WeightSubscriber
from buffer import Group, ReplayClient, ReplayConfig, learning_signal
from envs import EpisodeErrorCounter, SafeEnv, Task, make_env, make_task_source
from envs.rewards import correctness

log = logging.getLogger(__name__)


class RolloutWorker:
    def __init__(self, worker_id: int, model_path: str, cfg: RolloutConfig, env_cfg: EnvConfig,
                 replay_cfg: ReplayConfig, shard_urls: list[str], channel, seed: int) -> None:
        from transformers import AutoTokenizer

        torch.set_num_threads(1)  # several workers share the machine's cores
        self.cfg, self.env_cfg = cfg, env_cfg
        self.name = f"w{worker_id}-{uuid.uuid4().hex[:6]}"  # unique per incarnation: group ids never collide
        self.engine = VLLMEngine(model_path, cfg.engine, seed=seed)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.runner = EpisodeRunner(self.engine, self.tokenizer, cfg.max_new_tokens, cfg.max_turns)
        self.tasks = make_task_source(env_cfg.task_source, **env_cfg.task_params)
        self.replay = ReplayClient(replay_cfg, shard_urls)
        self.weights = WeightSubscriber(channel)
        self.errors = EpisodeErrorCounter()
        self.rng = np.random.default_rng(seed)
        self._engine_lock = threading.Lock()
        self._stop = threading.Event()
        self._sequence = 0
        self._counters = {"groups": 0, "generated_tokens": 0, "dropped_groups": 0, "generate_s": 0.0}

    # -- rounds --------------------------------------------------------------------------------
    def sync_weights(self) -> int:
        """Load the latest published weights if they are newer; returns the engine's version."""
        with self._engine_lock:  # evaluate() may sync from the other actor thread
            polled = self.weights.poll()
            if polled is not None:
                version, state = polled
                self.engine.load_weights(state.items())
                self.weights.version = version
            return self.weights.version

    def produce(self, num_groups: int) -> int:
        """Generate `num_groups` groups with the current weights and insert them; returns how many were stored."""
        groups = self._generate_groups([self.tasks.sample(self.rng) for _ in range(num_groups)])
        return sum(self.replay.insert_many(groups))

    def run(self) -> dict:
        """Produce until `stop()`; each round is admitted by the weight channel first."""
        n = self.cfg.groups_per_round
        while not self._stop.is_set():
            self.sync_weights()
            if not self.weights.admit(n, buffered=int(self.replay.stats().total("size"))):
                time.sleep(0.05)
                continue
            try:
                self.produce(n)
            finally:
                self.weights.done(n)
        return self.stats()

    def stop(self) -> None:
        self._stop.set()

    def _generate_groups(self, tasks: list[Task]) -> list[Group]:
        g = self.cfg.group_size
        started = time.time()
        with self._engine_lock:
            version = self.weights.version
            episodes = self.runner.run(
                [t for t in tasks for _ in range(g)], [self._env() for _ in range(len(tasks) * g)],
                temperature=self.cfg.temperature, version=version)
        self._counters["generate_s"] += time.time() - started
        groups = [self._group(task, episodes[i * g:(i + 1) * g]) for i, task in enumerate(tasks)]
        return [group for group in groups if group is not None]

    def _env(self):
        return SafeEnv(make_env(self.env_cfg.name, **self.env_cfg.params), self.errors)

    def _group(self, task: Task, episodes: list[Episode]) -> Group | None:
        # An episode that failed in env or reward code is dropped (already counted by SafeEnv);
        # a group needs two survivors to have a baseline.
        survivors = [e for e in episodes if e.error is None]
        if len(survivors) < 2:
            self._counters["dropped_groups"] += 1
            return None
        trajectories = [e.to_trajectory() for e in survivors]
        self._sequence += 1
        self._counters["groups"] += 1
        self._counters["generated_tokens"] += sum(t.num_generated_tokens for t in trajectories)
        rewards = np.array([t.reward for t in trajectories])
        return Group(group_id=f"{self.name}:{self._sequence}", task_id=task.task_id, category=task.category,
                     created_at=time.time(), trajectories=trajectories, priority=learning_signal(rewards))

    # -- evaluation and monitoring -------------------------------------------------------------
    def evaluate(self, temperature: float) -> dict:
        """Accuracy on the fixed held-out tasks with the latest weights (pass@1 at `temperature`)."""
        version = self.sync_weights()
        tasks = self.tasks.eval_tasks()
        with self._engine_lock:
            episodes = self.runner.run(tasks, [self._env() for _ in tasks], temperature=temperature, version=version)
        correct = [correctness(e.task, self.tokenizer.decode(e.completion_ids, skip_special_tokens=True), {})
                   for e in episodes]
        return {"accuracy": float(np.mean(correct)), "policy_version": version, "num_tasks": len(tasks)}

    def probe(self, num_tasks: int) -> list[dict]:
        """Sample fresh completions with the current weights, for checking engine/learner parity."""
        version = self.sync_weights()
        tasks = [self.tasks.sample(self.rng) for _ in range(num_tasks)]
        with self._engine_lock:
            episodes = self.runner.run(tasks, [self._env() for _ in tasks], temperature=1.0, version=version)
        return [{"token_ids": e.context(), "prompt_len": len(e.prompt_ids), "logprobs": e.logprobs,
                 "policy_version": version} for e in episodes]

    def stats(self) -> dict:
        return {**self._counters, "name": self.name, "policy_version": self.weights.version,
                "episode_errors": self.errors.total}


RemoteRolloutWorker = ray.remote(max_concurrency=2)(RolloutWorker)
