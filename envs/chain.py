"""A multi-turn arithmetic env: after each answer the env appends "+c=" and the model
continues the running sum. It exercises the multi-turn path of the API: observations
after the first are env tokens (loss_mask 0 in the trajectory)."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from envs.base import Action, Env, Observation, StepResult, Task, as_action, register_env
from envs.errors import EnvError, EpisodeStateError
from envs.rewards import CompositeReward
from envs.single_turn import turn_info


@register_env("chain_arithmetic")
class ChainArithmeticEnv(Env):
    """`turns` answers per episode. Each step's reward is that turn's reward / turns, so the
    episode return (the sum over steps) lies in the range of one turn's reward. The episode's
    accuracy is 1 when every running total was right."""

    def __init__(self, turns: int = 2, max_addend: int = 9, reward: CompositeReward | None = None) -> None:
        if turns < 1 or max_addend < 1:
            raise EnvError(f"chain_arithmetic needs turns >= 1 and max_addend >= 1, got {turns}, {max_addend}")
        self.turns = turns
        self.max_addend = max_addend
        self.reward = reward or CompositeReward.from_weights({"correctness": 1.0})
        self._task: Task | None = None
        self._addends: list[int] = []
        self._turn = 0
        self._all_correct = True

    def reset(self, task: Task) -> Observation:
        # Addends derive from the task id so that every sample of a GRPO group sees the same episode.
        rng = np.random.default_rng(zlib.crc32(task.task_id.encode()))
        self._addends = [int(x) for x in rng.integers(1, self.max_addend + 1, size=self.turns - 1)]
        self._task = task
        self._turn = 0
        self._all_correct = True
        return Observation(text=task.prompt)

    def step(self, action: Action | str) -> StepResult:
        if self._task is None:
            raise EpisodeStateError("chain_arithmetic.step called before reset or after the episode ended")
        action = as_action(action)
        info = turn_info(action) | {"turn": self._turn}
        total, parts = self.reward(self._task, action.text, info)
        self._all_correct = self._all_correct and parts.get("correctness", total) > 0
        self._turn += 1
        if self._turn == self.turns:
            self._task = None
            return StepResult(observation=None, reward=total / self.turns, done=True, reward_parts=parts, info=info,
                              metrics={"accuracy": float(self._all_correct)})
        addend = self._addends[self._turn - 1]
        self._task = dataclasses.replace(self._task, answer=str(int(self._task.answer) + addend))
        next_observation = Observation(text=f"+{addend}=")
        return StepResult(next_observation, reward=total / self.turns, done=False, reward_parts=parts, info=info)
