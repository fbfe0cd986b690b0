"""`RolloutWorker.probe` returns a sample per context the episodes built: none for a failed
episode (a failed reset builds none), one per player of a game. Runs `probe` on a worker built
without an engine, its episodes given."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from actors.engine import Sample
from actors.episode import Episode, RoleContext
from actors.rollout_worker import RolloutWorker
from actors.sampling import SamplingConfig
from envs import Task, make_task_source

TASK = Task(task_id="add/1+2", category="carries=0", prompt="1+2=", answer="3")


def _played(role: str, prompt: list[int], turn: list[int]) -> RoleContext:
    context = RoleContext(role, prompt)
    context.append_model(Sample(turn, [-0.5] * len(turn), [3] * len(turn), "stop"))
    return context


def test_probe_skips_failed_episodes_and_samples_every_player():
    worker = object.__new__(RolloutWorker)  # no engine, no Ray: probe's own code only
    worker.tasks, worker.rng = make_task_source("arithmetic"), np.random.default_rng(0)
    worker.cfg, worker.env_cfg = SimpleNamespace(sampling=SamplingConfig()), None
    failed_reset = Episode(TASK, env=None)
    failed_reset.finish("error", "EnvError: reset failed")
    game = Episode(TASK, env=None, roles={"x": _played("x", [1, 5], [6, 2]), "o": _played("o", [1, 7], [8, 2])})
    single = Episode(TASK, env=None, roles={"": _played("", [1, 9], [4, 2])})
    worker._episodes = lambda job, timeout_s, what: ([failed_reset, game, single], 3)
    samples = worker.probe(3)
    assert [(s["token_ids"], s["prompt_len"], s["loss_mask"]) for s in samples] == [
        ([1, 5, 6, 2], 2, [1, 1]), ([1, 7, 8, 2], 2, [1, 1]), ([1, 9, 4, 2], 2, [1, 1])]
    assert [s["policy_version"] for s in samples] == [3, 3, 3]
