"""Group-relative advantage estimators (GRPO, Dr. GRPO, RLOO), selected by name.

Input: rewards of the G completions of one prompt, shape [G] (or [..., G]: the last
dimension is the group). Output: one advantage per completion, same shape; the trainer
broadcasts it over the completion's tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from envs.registry import Registry

AdvantageFn = Callable[[torch.Tensor], torch.Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")
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
    advantages = ADVANTAGES.get(name)(rewards)
    # A zero-variance group teaches nothing: make it exactly zero (floating-point means of
    # equal values can leave residues like 1e-17 that would otherwise become gradient).
    constant = rewards.amax(dim=-1, keepdim=True) == rewards.amin(dim=-1, keepdim=True)
    return torch.where(constant, torch.zeros_like(advantages), advantages)
