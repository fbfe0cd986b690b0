"""Composable reward functions `(task, completion_text, info) -> float` and their registry.

`completion_text` is the decoded model turn without its stop token. `info` carries what
the text alone cannot tell: "finish_reason" ("stop" | "length") and "num_tokens" (the
turn's generated token count).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from envs.base import Task
from envs.errors import EnvError
from envs.registry import Registry

# The integer must end where the number does: "3.9", "3/4", "3,000" and "3e5" are not 3 ("3." is).
_LEADING_INT = re.compile(r"\s*(-?\d+)(?![\d/]|[.,eE]\d)")
_BARE_INT = re.compile(r"-?\d+")


class RewardFn(Protocol):
    def __call__(self, task: Task, completion: str, info: Mapping[str, Any]) -> float: ...


REWARDS: Registry[Callable[..., Any]] = Registry("reward")
"""Reward functions, or classes whose instances (built from params) are ones."""
register_reward = REWARDS.register


def make_reward(name: str, **params: Any) -> RewardFn:
    entry = REWARDS.get(name)
    if isinstance(entry, type):
        return entry(**params)
    if params:
        raise EnvError(f"reward {name!r} takes no parameters, got {sorted(params)}")
    return entry


def parse_leading_int(text: str) -> int | None:
    match = _LEADING_INT.match(text)
    return int(match.group(1)) if match else None


@register_reward("correctness")
def correctness(task: Task, completion: str, info: Mapping[str, Any]) -> float:
    """1 when the completion's leading integer equals the task's integer answer."""
    return float(parse_leading_int(completion) == _integer_answer(task))


def _integer_answer(task: Task) -> int:
    try:
        return int(task.answer)
    except ValueError:
        raise EnvError(f"correctness: task {task.task_id!r} has the answer {task.answer!r}, not an integer; "
                       f"use the math_answer reward for other numbers") from None


@register_reward("format")
def answer_format(task: Task, completion: str, info: Mapping[str, Any]) -> float:
    """1 when the turn is a bare integer that ended on a stop token (not cut off by max_tokens)."""
    stopped = info.get("finish_reason", "stop") == "stop"
    return float(stopped and _BARE_INT.fullmatch(completion) is not None)


@register_reward("overlong")
class OverlongPenalty:
    """DAPO soft overlong punishment on the token count |y|:
    0 if |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache up to L_max; -1 beyond."""

    def __init__(self, max_len: int, cache_len: int) -> None:
        if not 0 < cache_len <= max_len:
            raise EnvError(f"overlong needs 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
        self.max_len = max_len
        self.cache_len = cache_len

    def __call__(self, task: Task, completion: str, info: Mapping[str, Any]) -> float:
        length = info.get("num_tokens")
        length = len(completion) if length is None else int(length)
        budget = self.max_len - self.cache_len
        if length <= budget:
            return 0.0
        if length <= self.max_len:
            return (budget - length) / self.cache_len
        return -1.0


@dataclass(frozen=True)
class RewardTerm:
    name: str
    weight: float
    fn: RewardFn


class CompositeReward:
    """total = sum_k weight_k * r_k; parts hold each term's unweighted value r_k by name."""

    def __init__(self, terms: list[RewardTerm]) -> None:
        if not terms:
            raise EnvError("CompositeReward needs at least one term")
        names = [term.name for term in terms]
        if len(set(names)) != len(names):
            raise EnvError(f"reward term names must be unique, got {names}")
        for term in terms:
            if not math.isfinite(term.weight):
                raise EnvError(f"reward term {term.name!r} has non-finite weight {term.weight}")
        self.terms = terms

    @classmethod
    def from_weights(
        cls, weights: Mapping[str, float], params: Mapping[str, Mapping[str, Any]] | None = None
    ) -> CompositeReward:
        """Build from registry names: `from_weights({"correctness": 1.0, "overlong": 1.0},
        params={"overlong": {"max_len": 8, "cache_len": 4}})`."""
        params = params or {}
        unused = set(params) - set(weights)
        if unused:
            raise EnvError(f"reward params given for terms without a weight: {sorted(unused)}")
        return cls([RewardTerm(name, w, make_reward(name, **params.get(name, {}))) for name, w in weights.items()])

    def __call__(self, task: Task, completion: str, info: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        parts = {term.name: float(term.fn(task, completion, info)) for term in self.terms}
        for name, value in parts.items():
            if not math.isfinite(value):
                raise EnvError(f"reward term {name!r} returned non-finite value {value}")
        total = sum(term.weight * parts[term.name] for term in self.terms)
        return total, parts
