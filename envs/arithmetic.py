"""The arithmetic environment: "23+45=" -> the model answers "68" and stops."""

from __future__ import annotations

from envs.base import register_env
from envs.rewards import CompositeReward
from envs.single_turn import SingleTurnEnv


@register_env("arithmetic")
class ArithmeticEnv(SingleTurnEnv):
    """Tasks come from `envs.tasks.ArithmeticTasks`; the default reward is exact correctness."""

    def __init__(self, reward: CompositeReward | None = None) -> None:
        super().__init__(reward or CompositeReward.from_weights({"correctness": 1.0}))
