"""The environment API: a task becomes an episode of observations, actions and rewards.

Single-turn verifiable tasks are the one-step case: `reset` gives the prompt, one `step`
scores the completion and ends the episode. Multi-turn envs answer a step with the next
observation; the rollout worker appends its tokens to the context with loss_mask 0.

Episodes are token-in / token-out: the worker tokenizes each observation once and appends it
to a context that only grows, so an env never sees (or re-renders) earlier turns as tokens.
The episode return is the sum of the step rewards.

Multi-seat games (self-play) name the player each observation is for in `Observation.role`:
the worker keeps one context, and so one trajectory, per role, and generates the next turn
for whichever role the last observation addressed. Single-agent envs leave `role` empty.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from envs.registry import Registry


@dataclass(frozen=True)
class Task:
    """One problem instance. `task_id` is stable: the same problem always has the same id."""

    task_id: str
    category: str
    prompt: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """What the policy sees next: plain text, and chat messages for chat-template models.

    For a chat model, `messages` are the NEW messages of this turn (the first observation:
    the conversation so far, system prompt included); without them `text` is sent as one
    user message. `role` is the player that acts on it (multi-seat games; "" otherwise)."""

    text: str
    messages: list[dict[str, str]] | None = None
    role: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.info.get("error")


@dataclass(frozen=True)
class Action:
    """One model turn: the decoded text (without the stop token) and how generation ended."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str = "stop"  # "stop" (EOS or stop string) | "length" (hit max_tokens)
    policy_version: int = 0  # the learner version that generated it (reward schedules decay with it)


@dataclass(frozen=True)
class StepResult:
    """The env's answer to one action. `observation` is None when the episode is done.

    `reward` and `reward_parts` go to the role that acted; `role_rewards` are what this step
    gives the other roles of a multi-seat game (the outcome, to the player who did not make
    the last move). `metrics` on the final step are the episode's evaluation measures, one
    number each (e.g. accuracy 1.0, tool_call_rate 1.0); evaluation reports their means."""

    observation: Observation | None
    reward: float
    done: bool
    reward_parts: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    role_rewards: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        """The exception text when the episode failed inside env or reward code."""
        return self.info.get("error")


class Env(abc.ABC):
    """One episode at a time; create one instance per concurrent episode."""

    name: str = ""  # set by @register_env

    @abc.abstractmethod
    def reset(self, task: Task) -> Observation:
        """Start an episode on `task` and return the first observation."""

    @abc.abstractmethod
    def step(self, action: Action | str) -> StepResult:
        """Consume one model turn; a plain string is a turn that ended with a stop token."""


def as_action(action: Action | str) -> Action:
    return action if isinstance(action, Action) else Action(text=action)


EnvT = TypeVar("EnvT", bound=type[Env])
ENVS: Registry[Callable[..., Env]] = Registry("env")


def register_env(name: str) -> Callable[[EnvT], EnvT]:
    """Class decorator: `@register_env("arithmetic")` makes the env available to `make_env`."""

    def decorate(cls: EnvT) -> EnvT:
        ENVS.register(name)(cls)
        cls.name = name
        return cls

    return decorate


def make_env(name: str, **kwargs: Any) -> Env:
    return ENVS.build(name, **kwargs)
