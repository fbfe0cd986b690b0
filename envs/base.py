"""The environment API: a task becomes an episode of observations, actions and rewards.

Single-turn verifiable tasks are the one-step case: `reset` gives the prompt, one `step`
scores the completion and ends the episode. Multi-turn envs answer a step with the next
observation; the rollout worker appends its tokens to the context with loss_mask 0.
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
    """What the policy sees: plain text, and chat messages for chat-template models."""

    text: str
    messages: list[dict[str, str]] | None = None
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


@dataclass(frozen=True)
class StepResult:
    """The env's answer to one action. `observation` is None when the episode is done."""

    observation: Observation | None
    reward: float
    done: bool
    reward_parts: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

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
    return ENVS.get(name)(**kwargs)
