"""The one-step case of the env API: the prompt is the observation, one turn is scored."""

from __future__ import annotations

from envs.base import Action, Env, Observation, StepResult, Task, as_action, register_env
from envs.errors import EnvError, EpisodeStateError
from envs.rewards import CompositeReward


def turn_info(action: Action) -> dict[str, object]:
    """What reward functions need to know about a turn beyond its text."""
    return {"finish_reason": action.finish_reason, "num_tokens": len(action.token_ids) or None}


class SingleTurnEnv(Env):
    """Subclasses choose the default reward; the episode logic is shared. The episode's
    accuracy (its evaluation measure) is whether the reward term `success_term` is > 0, or,
    for a reward without that term, whether the total is."""

    def __init__(self, reward: CompositeReward, success_term: str = "correctness") -> None:
        self.reward = reward
        self.success_term = success_term
        self._task: Task | None = None

    def reset(self, task: Task) -> Observation:
        self._task = task
        return Observation(text=task.prompt)

    def step(self, action: Action | str) -> StepResult:
        if self._task is None:
            raise EpisodeStateError(f"{type(self).__name__}.step called before reset or after the episode ended")
        task, self._task = self._task, None
        action = as_action(action)
        info = turn_info(action)
        total, parts = self.reward(task, action.text, info)
        return StepResult(observation=None, reward=total, done=True, reward_parts=parts, info=info,
                          metrics={"accuracy": float(parts.get(self.success_term, total) > 0)})


@register_env("single_turn")
class ScoredTurnEnv(SingleTurnEnv):
    """Any single-turn task scored by registered reward terms, built from a YAML config:
    `params: {rewards: {math_answer: 1.0}, reward_params: {}, success_term: math_answer}`
    (success_term defaults to the first term)."""

    def __init__(self, rewards: dict[str, float], reward_params: dict[str, dict] | None = None,
                 success_term: str | None = None) -> None:
        if not rewards:
            raise EnvError("single_turn needs at least one reward term in `rewards`")
        super().__init__(CompositeReward.from_weights(rewards, reward_params), success_term or next(iter(rewards)))
