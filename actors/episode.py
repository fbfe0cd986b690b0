"""One episode's state: a growing token context per role, its rewards, and how it ended.

Tokens the policy sampled get loss_mask 1, their behaviour logprob and the policy version that
sampled each of them; observation tokens get loss_mask 0. The return of a role is the sum of the
step rewards it received; each step's parts are kept, and their sum per name.

finish_reason of a finished episode:
    stop       the env ended it after a model turn that ended on EOS or a stop string
    length     the env ended it after a turn cut at max_new_tokens, or the context reached
               the episode's token budget (overlong)
    max_turns  the turn limit came before the env ended it
    timeout    an env call exceeded its wall-clock limit   } not trained on: the group
    error      env or reward code raised                   } keeps its other episodes
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from actors.engine import Sample
from buffer.schema import NO_VERSION, Trajectory
from envs import Env, Task

FAILED = ("timeout", "error")


class EpisodeLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_turns: int = Field(1, ge=1)
    """Model turns per role; an episode still running after them ends as max_turns."""
    max_tokens: int | None = Field(None, ge=2)
    """Token budget of a context (prompt, turns and observations); None: the engine's max_model_len."""
    step_timeout_s: float = Field(10.0, gt=0)
    """Wall-clock limit of each env call (reset or step): a hung tool ends its episode as timeout."""


@dataclass
class RoleContext:
    """The token context of one role (a single-agent episode has one, role "")."""

    role: str
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    step_rewards: list[float] = field(default_factory=list)
    step_parts: list[dict[str, float]] = field(default_factory=list)
    num_turns: int = 0
    last_token: int | None = None  # the last token the model sampled (its end of turn, if any)

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)

    def context(self) -> list[int]:
        return self.prompt_ids + self.completion_ids

    def append_model(self, sample: Sample) -> None:
        self.completion_ids += sample.token_ids
        self.loss_mask += [1] * len(sample.token_ids)
        self.logprobs += sample.logprobs
        self.versions += sample.versions
        self.num_turns += 1
        self.last_token = sample.token_ids[-1] if sample.token_ids else None

    def append_env(self, token_ids: list[int]) -> None:
        self.completion_ids += token_ids
        self.loss_mask += [0] * len(token_ids)
        self.logprobs += [0.0] * len(token_ids)
        self.versions += [NO_VERSION] * len(token_ids)

    def add_reward(self, reward: float, parts: dict[str, float]) -> None:
        self.step_rewards.append(float(reward))
        self.step_parts.append(dict(parts))

    @property
    def reward(self) -> float:
        return float(sum(self.step_rewards))

    def summed_parts(self) -> dict[str, float]:
        summed: dict[str, float] = {}
        for parts in self.step_parts:
            for name, value in parts.items():
                summed[name] = summed.get(name, 0.0) + float(value)
        return summed


@dataclass
class Episode:
    task: Task
    env: Env
    roles: dict[str, RoleContext] = field(default_factory=dict)
    acting: str = ""  # the role whose turn is being generated or answered
    last_finish: str = "stop"  # how the last model turn ended: "stop" | "length"
    finish_reason: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the env's evaluation measures
    started_at: float = field(default_factory=time.time)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def failed(self) -> bool:
        return self.finish_reason in FAILED

    def finish(self, reason: str, error: str | None = None) -> None:
        self.finish_reason, self.error = reason, error

    @property
    def reward(self) -> float:
        """The return of the episode's single role (or of the first role of a game)."""
        return next(iter(self.roles.values())).reward if self.roles else 0.0

    def trajectories(self) -> list[Trajectory]:
        """One per role that took at least one turn."""
        elapsed = time.time() - self.started_at
        return [Trajectory(prompt_ids=r.prompt_ids, completion_ids=r.completion_ids, loss_mask=r.loss_mask,
                           behavior_logprobs=r.logprobs, policy_versions=r.versions, reward=r.reward,
                           reward_parts=r.summed_parts(), finish_reason=self.finish_reason or "stop",
                           num_turns=r.num_turns, env_name=self.env.name, task_id=self.task.task_id,
                           timings={"episode_s": elapsed}, role=r.role, step_rewards=r.step_rewards,
                           step_reward_parts=r.step_parts)
                for r in self.roles.values() if r.num_turns > 0]
