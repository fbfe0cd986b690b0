"""A trivially learnable env for integration tests: reward 1 when the completion starts
with one of a few target characters. The policy only has to move its first-token
distribution, so GRPO raises the reward within a handful of small steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envs.base import Task, register_env
from envs.errors import EnvError
from envs.rewards import CompositeReward, RewardTerm, register_reward
from envs.single_turn import SingleTurnEnv


@register_reward("first_char")
class FirstCharIn:
    """1 when the completion's first character is one of `targets`."""

    def __init__(self, targets: str) -> None:
        if not targets:
            raise EnvError("first_char needs at least one target character")
        self.targets = targets

    def __call__(self, task: Task, completion: str, info: Mapping[str, Any]) -> float:
        return float(completion[:1] != "" and completion[0] in self.targets)


@register_env("first_digit")
class FirstDigitEnv(SingleTurnEnv):
    """Arithmetic prompts, but the reward ignores correctness: only the first digit counts."""

    def __init__(self, targets: str = "1234") -> None:
        super().__init__(CompositeReward([RewardTerm("first_char", 1.0, FirstCharIn(targets))]), "first_char")
