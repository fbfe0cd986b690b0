"""The user-code boundary: an exception inside an env or a reward function fails that
episode only. It is counted (by env and exception type) and logged, and never reaches the
rollout worker's loop. Hung env calls are the rollout worker's to bound (actors/env_calls.py);
they are counted here too, as `TimeoutError`."""

from __future__ import annotations

import logging
import threading
from collections import Counter

from envs.base import Action, Env, Observation, StepResult, Task

log = logging.getLogger(__name__)


class EpisodeErrorCounter:
    """Failed episodes by "env_name/ExceptionType"; safe to share across threads."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, env_name: str, kind: str) -> None:
        with self._lock:
            self._counts[f"{env_name}/{kind}"] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class SafeEnv(Env):
    """Wraps an env so that `reset` and `step` never raise.

    A failed reset returns an Observation whose `error` is set; a failed step returns a
    done StepResult with reward 0 and `info["error"]`. The worker ends such an episode as
    finish_reason "error" and does not train on it.
    """

    def __init__(self, env: Env, errors: EpisodeErrorCounter) -> None:
        self.env = env
        self.errors = errors
        self.name = env.name

    def _fail(self, phase: str, exc: Exception) -> dict[str, str]:
        self.errors.record(self.name, type(exc).__name__)
        log.warning("env %r failed in %s: %s", self.name, phase, describe(exc), exc_info=exc)
        return {"error": describe(exc), "phase": phase}

    def reset(self, task: Task) -> Observation:
        try:
            return self.env.reset(task)
        except Exception as e:  # user code boundary: counted above, never propagated
            return Observation(text="", info=self._fail("reset", e))

    def step(self, action: Action | str) -> StepResult:
        try:
            return self.env.step(action)
        except Exception as e:  # user code boundary: counted above, never propagated
            return StepResult(observation=None, reward=0.0, done=True, info=self._fail("step", e))
