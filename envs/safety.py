"""The user-code boundary: an exception inside an env or a reward function fails that
episode only, and so does an answer the worker could not train on (a NaN reward, a reward part
that is not a number, a step that returns no Observation: InvalidStepResult, naming the value).
Each is counted (by env and exception type) and logged, and never reaches the
rollout worker's loop. Hung env calls are the rollout worker's to bound (actors/env_calls.py);
they are counted here too, as `TimeoutError`."""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections import Counter

from envs.base import Action, Env, Observation, StepResult, Task
from envs.errors import InvalidStepResult

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


def _check_number(what: str, value: object) -> None:
    # numbers.Real admits Python and numpy numbers (and bool, a 0/1 reward); math.isfinite rejects NaN and inf
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidStepResult(f"{what} is {value!r}: it must be a finite number")


def _check_observation(what: str, observation: object) -> None:
    if not isinstance(observation, Observation):
        raise InvalidStepResult(f"{what} returned {type(observation).__name__}, not an Observation")


def check_step_result(result: object) -> None:
    """Raises InvalidStepResult naming the first value of `result` that the worker could not use."""
    if not isinstance(result, StepResult):
        raise InvalidStepResult(f"step returned {type(result).__name__}, not a StepResult")
    _check_number("reward", result.reward)
    for name in ("reward_parts", "role_rewards", "metrics"):
        values = getattr(result, name)
        if not isinstance(values, dict):
            raise InvalidStepResult(f"{name} is a {type(values).__name__}, not a dict of names to numbers")
        for key, value in values.items():
            if not isinstance(key, str):
                raise InvalidStepResult(f"{name} has the key {key!r}: names must be strings")
            _check_number(f"{name}[{key!r}]", value)
    if not result.done and result.observation is not None:
        _check_observation("step", result.observation)


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
            observation = self.env.reset(task)
            _check_observation("reset", observation)
            return observation
        except Exception as e:  # user code boundary: counted above, never propagated
            return Observation(text="", info=self._fail("reset", e))

    def step(self, action: Action | str) -> StepResult:
        try:
            result = self.env.step(action)
            check_step_result(result)
            return result
        except Exception as e:  # user code boundary: counted above, never propagated
            return StepResult(observation=None, reward=0.0, done=True, info=self._fail("step", e))
