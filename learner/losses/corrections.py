"""Importance ratios and off-policy weights from the three policies of asynchronous PPO:
`behavior_logprobs` (the engine that sampled), `proximal_logprobs` (the learner's weights
before this update) and `logprobs` (current, with gradient)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.loss_config import CorrectionConfig

LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: keeps ratios finite for tokens the policies disagree on wildly


@dataclass(frozen=True)
class ImportanceTerms:
    log_ratio: torch.Tensor  # clamped log(pi / pi_old), pi_old = behaviour, or proximal when decoupled
    weight: torch.Tensor | None  # detached truncated behaviour weight (tis, decoupled), else None
    capped: torch.Tensor | None  # bool: the weight hit the cap


def clamped_log_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return (numerator - denominator).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def importance_terms(
    logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor | None,
    cfg: CorrectionConfig,
) -> ImportanceTerms:
    # Without proximal logprobs the current weights before the optimizer step are the proximal
    # policy: their (detached) logprobs are exactly what a recompute pass would produce.
    proximal = logprobs.detach() if proximal_logprobs is None else proximal_logprobs
    old = proximal if cfg.mode == "decoupled" else behavior_logprobs
    log_ratio = clamped_log_ratio(logprobs, old)
    if cfg.mode == "none":
        return ImportanceTerms(log_ratio=log_ratio, weight=None, capped=None)
    raw_weight = clamped_log_ratio(proximal, behavior_logprobs).detach().exp()
    return ImportanceTerms(log_ratio=log_ratio, weight=raw_weight.clamp(max=cfg.cap), capped=raw_weight > cfg.cap)


def importance_ratio(
    logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor | None,
    cfg: CorrectionConfig,
) -> torch.Tensor:
    """The ratio r the objective clips, as `prepare_step` (BAPO) needs it: detached."""
    return importance_terms(logprobs.detach(), behavior_logprobs, proximal_logprobs, cfg).log_ratio.exp()
