"""The user-code boundary: an exception inside an env or a reward function fails that
episode only. It is counted and logged, and never reaches the rollout worker's loop."""

from __future__ import annotations

import logging
import threading
from collections import Counter

from envs.base import Action, Env, Observation, StepResult, Task

log = logging.getLogger(__name__)


class EpisodeErrorCounter:
    """Failed episodes by "env_name/phase" (phase: reset | step); safe to share across threads."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, env_name: str, phase: str) -> None:
        with self._lock:
            self._counts[f"{env_name}/{phase}"] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class SafeEnv(Env):
    """Wraps an env so that `reset` and `step` never raise.

    A failed reset returns an Observation whose `error` is set; a failed step returns a
    done StepResult with reward 0 and `info["error"]`. Workers should drop (or mark
    finish_reason="error") the episode rather than train on its reward.
    """

    def __init__(self, env: Env, errors: EpisodeErrorCounter) -> None:
        self.env = env
        self.errors = errors
        self.name = env.name

    def _fail(self, phase: str, exc: Exception) -> dict[str, str]:
        self.errors.record(self.name, phase)
        log.warning("env %r failed in %s: %s", self.name, phase, _describe(exc), exc_info=exc)
        return {"error": _describe(exc), "phase": phase}

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
