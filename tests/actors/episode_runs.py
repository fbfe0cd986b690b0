"""Running groups through an episode loop until it is idle, for the loop's and the renderers' tests."""

from __future__ import annotations

import time

from actors.episode_loop import EpisodeLoop
from actors.sampling import SamplingConfig
from envs import Env, Task

SAMPLING = SamplingConfig(max_new_tokens=6)


def run_groups(loop: EpisodeLoop, groups: list[tuple[Task, list[Env]]], timeout_s: float = 10.0,
               inline: bool = False) -> list:
    """Starts a group ("g0", "g1", ...) per (task, envs) and pumps the loop until all are done."""
    done = []
    for i, (task, envs) in enumerate(groups):
        loop.start(f"g{i}", task, envs, SAMPLING, done.append, inline=inline)
    deadline = time.monotonic() + timeout_s
    while not loop.idle:
        loop.pump(wait_s=0.01)
        assert time.monotonic() < deadline, "the loop did not finish its groups"
    return done
