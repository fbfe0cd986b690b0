"""Regularisers of the policy loss: KL to a reference policy, and the covariance-based
entropy controls Clip-Cov and KL-Cov ("The Entropy Mechanism of RL for Reasoning LMs")."""

from __future__ import annotations

from collections.abc import Callable

import torch

from learner.loss_config import ClipCovConfig, KLCovConfig
from learner.losses.corrections import LOG_RATIO_CLAMP
from envs.registry import Registry

KL_ESTIMATORS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def _k1(x: torch.Tensor) -> torch.Tensor:
    return -x


@KL_ESTIMATORS.register("k2")
def _k2(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x.square()


@KL_ESTIMATORS.register("k3")
def _k3(x: torch.Tensor) -> torch.Tensor:
    return x.exp() - 1 - x


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from x = logp_ref - logp (Schulman's k1, k2, k3)."""
    x = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return KL_ESTIMATORS.get(estimator)(x)


def token_covariance(advantages: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cov_t = (A_t - mean A)(logp_t - mean logp), means over the masked tokens; detached."""
    valid = mask > 0
    advantages, logprobs = advantages.detach(), logprobs.detach()
    count = valid.sum().clamp(min=1)
    centred_adv = advantages - advantages[valid].sum() / count
    centred_logp = logprobs - logprobs[valid].sum() / count
    return centred_adv * centred_logp


def _selection_size(fraction: float, mask: torch.Tensor) -> int:
    # At least one token, as in verl: 2e-4 of a small micro-batch would otherwise round to none.
    return max(1, int(fraction * int((mask > 0).sum())))


def clip_cov_selection(
    cov: torch.Tensor,
    unclipped: torch.Tensor,
    mask: torch.Tensor,
    cfg: ClipCovConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Bool [B, T]: a random `fraction` (of the masked tokens) among the unclipped masked tokens
    with cov_low < Cov < cov_high; their gradient is to be stopped."""
    eligible = (mask > 0) & unclipped & (cov > cfg.cov_low) & (cov < cfg.cov_high)
    candidates = eligible.reshape(-1).nonzero().squeeze(-1)
    count = min(_selection_size(cfg.fraction, mask), len(candidates))
    order = torch.randperm(len(candidates), generator=generator, device=generator.device)[:count]
    selected = torch.zeros(eligible.numel(), dtype=torch.bool, device=eligible.device)
    selected[candidates[order.to(candidates.device)]] = True
    return selected.reshape(eligible.shape)


def kl_cov_selection(cov: torch.Tensor, mask: torch.Tensor, cfg: KLCovConfig) -> torch.Tensor:
    """Bool [B, T]: the top `fraction` of the masked tokens by Cov."""
    valid = (mask > 0).reshape(-1)
    ranked = torch.where(valid, cov.reshape(-1), torch.full_like(cov.reshape(-1), -torch.inf))
    count = min(_selection_size(cfg.fraction, mask), int(valid.sum()))
    selected = torch.zeros_like(valid)
    selected[torch.topk(ranked, count).indices] = True
    return selected.reshape(cov.shape)
