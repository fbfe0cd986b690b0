"""Policy objectives, selected by name: per-token losses [B, T] before weighting and aggregation.

Every objective is `fn(log_ratio, logprobs, advantages, mask, bounds, cfg) -> ObjectiveTerms`,
where `bounds` = (c_low, c_high) come from the step state (fixed, or BAPO's adaptive ones)
and `cfg` is the objective's own sub-config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from learner.loss_config import BAPOConfig, CISPOConfig, GSPOConfig, ObjectiveConfig, PPOClipConfig
from learner.losses.aggregation import masked_sum
from envs.registry import Registry


@dataclass(frozen=True)
class ObjectiveTerms:
    loss: torch.Tensor  # [B, T] per-token loss
    clipped_low: torch.Tensor  # bool [B, T]: the lower bound cut the gradient (A < 0, r < c_low)
    clipped_high: torch.Tensor  # bool [B, T]: the upper bound cut (or, for CISPO, truncated) it
    clipped_dual: torch.Tensor  # bool [B, T]: dual clip cut it (A < 0, r > c_dual)


ObjectiveFn = Callable[..., ObjectiveTerms]
POLICY_LOSSES: Registry[ObjectiveFn] = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register


def clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    bounds: tuple[float, float],
    dual_clip: float | None,
) -> ObjectiveTerms:
    """L = -min(r A, clip(r, c_low, c_high) A); with dual clip, L = min(L, -c_dual A) for A < 0."""
    c_low, c_high = bounds
    loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(c_low, c_high))
    negative = advantages < 0
    clipped_dual = torch.zeros_like(negative)
    if dual_clip is not None:
        cap = -dual_clip * advantages
        clipped_dual = negative & (loss > cap)
        loss = torch.where(clipped_dual, cap, loss)
    return ObjectiveTerms(
        loss=loss,
        clipped_low=negative & (ratio < c_low),
        clipped_high=(advantages > 0) & (ratio > c_high),
        clipped_dual=clipped_dual,
    )


@register_policy_loss("ppo_clip")
@register_policy_loss("bapo")  # BAPO only chooses the bounds (prepare_step); the loss is PPO-clip
def ppo_clip(
    log_ratio: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    bounds: tuple[float, float],
    cfg: PPOClipConfig | BAPOConfig,
) -> ObjectiveTerms:
    return clipped_surrogate(log_ratio.exp(), advantages, bounds, cfg.dual_clip)


@register_policy_loss("gspo")
def gspo(
    log_ratio: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    bounds: tuple[float, float],
    cfg: GSPOConfig,
) -> ObjectiveTerms:
    """Sequence ratio s_i = exp(mean_t log r_t), clipped; every token carries its sequence's loss,
    so seq-mean-token-mean aggregation gives mean_i L_i."""
    tokens = mask.sum(-1, keepdim=True).clamp(min=1)
    sequence_ratio = (masked_sum(log_ratio, mask, dim=-1).unsqueeze(-1) / tokens).exp().expand_as(log_ratio)
    return clipped_surrogate(sequence_ratio, advantages, bounds, dual_clip=None)


@register_policy_loss("cispo")
def cispo(
    log_ratio: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    bounds: tuple[float, float],
    cfg: CISPOConfig,
) -> ObjectiveTerms:
    """L = -sg(clip(r, 0, c_high)) A logp: every token keeps its gradient, only its weight is capped."""
    ratio = log_ratio.detach().exp()
    _, c_high = bounds
    loss = -ratio.clamp(max=c_high) * advantages * logprobs
    no_clip = torch.zeros_like(ratio, dtype=torch.bool)
    return ObjectiveTerms(loss=loss, clipped_low=no_clip, clipped_high=ratio > c_high, clipped_dual=no_clip)


def objective_terms(
    cfg: ObjectiveConfig,
    log_ratio: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    bounds: tuple[float, float],
) -> ObjectiveTerms:
    """Looks the objective up by its config's name and applies it."""
    fn = POLICY_LOSSES.get(cfg.name)
    return fn(log_ratio=log_ratio, logprobs=logprobs, advantages=advantages, mask=mask, bounds=bounds, cfg=cfg)
