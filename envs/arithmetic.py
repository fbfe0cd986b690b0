"""The arithmetic environment: "23+45=" -> the model answers "68" and stops."""

from __future__ import annotations

import time

from envs.base import Action, StepResult, register_env
from envs.rewards import CompositeReward
from envs.single_turn import SingleTurnEnv


@register_env("arithmetic")
class ArithmeticEnv(SingleTurnEnv):
    """Tasks come from `envs.tasks.ArithmeticTasks`; the default reward is exact correctness.
    `step_latency_s` makes every step wait that long before it is scored: the agentic case of a
    sandbox or tool call that takes wall time but no CPU (`tidal bench async`)."""

    def __init__(self, reward: CompositeReward | None = None, step_latency_s: float = 0.0) -> None:
        if step_latency_s < 0:
            raise ValueError(f"step_latency_s must be >= 0, got {step_latency_s}")
        super().__init__(reward or CompositeReward.from_weights({"correctness": 1.0}))
        self.step_latency_s = step_latency_s

    def step(self, action: Action | str) -> StepResult:
        if self.step_latency_s:  # sleep(0) still gives up the GIL: about 0.1 ms a step on 2 busy cores
            time.sleep(self.step_latency_s)
        return super().step(action)
