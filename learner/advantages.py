"""Advantage estimators, selected by name: group-relative ones (GRPO, Dr. GRPO, RLOO) and SPIRAL's
role-conditioned baselines (RAE) for multi-seat games.

A group-relative estimator is a function of the rewards of the G completions of one prompt,
shape [G] (or [..., G]: the last dimension is the group), giving one advantage per completion.
RAE keeps state across groups (a baseline per game and role), so it is a class; `make_estimator`
gives every estimator the same interface: one advantage per trajectory of a group. The trainer
broadcasts each over its trajectory's tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from envs.registry import Registry

if TYPE_CHECKING:  # the loss library imports without the replay service's dependencies
    from buffer import Group

ADVANTAGES: Registry[Any] = Registry("advantage estimator")
register_advantage = ADVANTAGES.register

GRPO_STD_EPS = 1e-6


@register_advantage("grpo")
def grpo(rewards: torch.Tensor) -> torch.Tensor:
    # Population std (divide by G, unbiased=False): the group is the whole population it normalises.
    std = rewards.std(dim=-1, keepdim=True, unbiased=False)
    return (rewards - rewards.mean(dim=-1, keepdim=True)) / (std + GRPO_STD_EPS)


@register_advantage("dr_grpo")
def dr_grpo(rewards: torch.Tensor) -> torch.Tensor:
    return rewards - rewards.mean(dim=-1, keepdim=True)


@register_advantage("rloo")
def rloo(rewards: torch.Tensor) -> torch.Tensor:
    size = rewards.shape[-1]
    if size < 2:
        raise ValueError(f"RLOO needs at least 2 completions per group, got {size}")
    leave_one_out_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / (size - 1)
    return rewards - leave_one_out_mean


def compute_advantages(name: str, rewards: torch.Tensor) -> torch.Tensor:
    """Advantages of one group (or a stack of groups along the leading dimensions)."""
    if rewards.ndim == 0 or rewards.shape[-1] == 0:
        raise ValueError(f"rewards must have a non-empty group dimension, got shape {tuple(rewards.shape)}")
    rewards = rewards.to(torch.float32) if not rewards.is_floating_point() else rewards
    estimator = ADVANTAGES.get(name)
    if isinstance(estimator, type):
        raise ValueError(f"advantage estimator {name!r} is not group-relative: use make_estimator")
    advantages = estimator(rewards)
    # A zero-variance group teaches nothing: make it exactly zero (floating-point means of
    # equal values can leave residues like 1e-17 that would otherwise become gradient).
    constant = rewards.amax(dim=-1, keepdim=True) == rewards.amin(dim=-1, keepdim=True)
    return torch.where(constant, torch.zeros_like(advantages), advantages)


class AdvantageEstimator(Protocol):
    def __call__(self, group: Group, first_use: bool) -> np.ndarray:
        """One advantage per trajectory; `first_use` is False when the group was trained on before."""

    def state(self) -> dict:
        """What a checkpoint keeps (JSON-serialisable)."""

    def load_state(self, state: Mapping) -> None: ...


class GroupRelative:
    """A group-relative estimator function as an AdvantageEstimator (no state)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, group: Group, first_use: bool) -> np.ndarray:
        return compute_advantages(self.name, torch.tensor(group.rewards)).numpy()

    def state(self) -> dict:
        return {}

    def load_state(self, state: Mapping) -> None:
        """Stateless."""


@register_advantage("rae")
class RoleBaselines:
    """SPIRAL's role-conditioned advantage estimation: a baseline per (game, role), an exponential
    moving average of that role's returns, b <- alpha * b + (1 - alpha) * R after each episode, and
    A = R - b(game, role) with the baseline before the episode. In a zero-sum game a shared baseline
    would leave the first mover's advantage in the gradient; one per role takes it out. A "game"
    is the env and the group's task category (which names the opponent when a run mixes self-play
    with fixed opponents: the returns against each are on their own scale). Episodes update the
    baselines once, on their group's first use."""

    def __init__(self, alpha: float = 0.95) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"rae alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.baselines: dict[str, float] = {}

    def __call__(self, group: Group, first_use: bool) -> np.ndarray:
        advantages = []
        for trajectory in group.trajectories:
            key = f"{trajectory.env_name}/{group.category}/{trajectory.role}"
            baseline = self.baselines.get(key, 0.0)
            advantages.append(trajectory.reward - baseline)
            if first_use:
                self.baselines[key] = self.alpha * baseline + (1.0 - self.alpha) * trajectory.reward
        return np.array(advantages, dtype=np.float64)

    def state(self) -> dict:
        return {"baselines": dict(self.baselines)}

    def load_state(self, state: Mapping) -> None:
        self.baselines = {k: float(v) for k, v in state.get("baselines", {}).items()}


def make_estimator(name: str, params: Mapping[str, Any] | None = None) -> AdvantageEstimator:
    """The estimator `name` with its `params` (only stateful estimators take any)."""
    if isinstance(ADVANTAGES.get(name), type):
        return ADVANTAGES.build(name, **dict(params or {}))
    if params:
        raise ValueError(f"advantage estimator {name!r} takes no parameters, got {sorted(params)}")
    return GroupRelative(name)
