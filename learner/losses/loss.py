"""The trainer's entry points: `prepare_step` once per update batch, `policy_loss` per micro-batch.

Metrics of `policy_loss` are ADDITIVE: each is this micro-batch's share of the update-batch
value (token metrics are divided by the global token count), so the trainer sums them over
micro-batches and ranks, exactly like the loss, then calls `finalize_metrics` once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.loss_config import BAPOConfig, PolicyLossConfig
from learner.losses.aggregation import Normalizers, aggregate, masked_sum
from learner.losses.bapo import bapo_bounds
from learner.losses.corrections import ImportanceTerms, importance_terms
from learner.losses.objectives import ObjectiveTerms, objective_terms
from learner.losses.regularizers import clip_cov_selection, kl_cov_selection, kl_penalty, token_covariance


@dataclass
class LossInputs:
    """One micro-batch; [B, T] tensors, T = completion length (padded)."""

    logprobs: torch.Tensor  # current policy, requires grad
    behavior_logprobs: torch.Tensor  # the engine that sampled the tokens
    advantages: torch.Tensor  # per token (the sequence advantage broadcast)
    mask: torch.Tensor  # float 0/1: 1 on policy-generated tokens
    proximal_logprobs: torch.Tensor | None = None  # learner weights before this update (decoupled PPO)
    ref_logprobs: torch.Tensor | None = None  # reference policy (KL), when kl.coef > 0
    entropy: torch.Tensor | None = None  # per-token entropy of the current policy, with grad


@dataclass(frozen=True)
class StepState:
    """What `prepare_step` fixes for every micro-batch of one update batch."""

    c_low: float
    c_high: float
    rho: float | None = None  # BAPO's positive share at the chosen bounds
    generator: torch.Generator | None = None  # Clip-Cov's random choice

    @property
    def metrics(self) -> dict[str, float]:
        values = {"c_low": self.c_low, "c_high": self.c_high}
        return values if self.rho is None else values | {"bapo_rho": self.rho}


def fixed_step_state(cfg: PolicyLossConfig, generator: torch.Generator | None = None) -> StepState:
    if cfg.clip_cov is not None and generator is None:
        raise ValueError("clip_cov is configured: pass a seeded torch.Generator to prepare_step")
    c_low, c_high = cfg.objective.fixed_bounds()
    return StepState(c_low=c_low, c_high=c_high, generator=generator)


def prepare_step(
    cfg: PolicyLossConfig,
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> StepState:
    """Once per update batch, before the micro-batch loop, with this rank's whole batch
    (flattened masked tokens are fine). `ratio` as the objective will see it: see
    `corrections.importance_ratio`. BAPO bounds are reduced over all ranks."""
    state = fixed_step_state(cfg, generator)
    if not isinstance(cfg.objective, BAPOConfig):
        return state
    c_low, c_high, rho = bapo_bounds(ratio, advantages, mask, behavior_logprobs, cfg.objective)
    return StepState(c_low=c_low, c_high=c_high, rho=rho, generator=generator)


def _apply_entropy_controls(
    per_token: torch.Tensor, inputs: LossInputs, terms: ObjectiveTerms, log_ratio: torch.Tensor,
    state: StepState, cfg: PolicyLossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    selections: dict[str, torch.Tensor] = {}
    if cfg.clip_cov is None and cfg.kl_cov is None:
        return per_token, selections
    cov = token_covariance(inputs.advantages, inputs.logprobs, inputs.mask)
    if cfg.clip_cov is not None:
        unclipped = ~(terms.clipped_low | terms.clipped_high | terms.clipped_dual)
        stopped = clip_cov_selection(cov, unclipped, inputs.mask, cfg.clip_cov, state.generator)
        per_token = torch.where(stopped, per_token.detach(), per_token)
        selections["clip_cov_frac"] = stopped
    if cfg.kl_cov is not None:
        # |log r| is |logp - logp_beh| (|logp - logp_prox| when decoupled): distance to the old policy.
        penalised = kl_cov_selection(cov, inputs.mask, cfg.kl_cov)
        per_token = per_token + cfg.kl_cov.coef * log_ratio.abs() * penalised
        selections["kl_cov_frac"] = penalised
    return per_token, selections


def _gradient_mass(policy_loss: torch.Tensor, inputs: LossInputs) -> dict[str, torch.Tensor]:
    """Sum of |dL/dlogp_t| over tokens with A > 0 and with A < 0 (additive; shares in finalize).
    Differentiates only down to `logprobs`, so it costs a pass over the loss graph, not the model."""
    grad = None
    if inputs.logprobs.requires_grad:
        (grad,) = torch.autograd.grad(policy_loss, inputs.logprobs, retain_graph=True, allow_unused=True)
    grad = torch.zeros_like(inputs.logprobs) if grad is None else grad.abs() * (inputs.mask > 0)
    return {"grad_mass_pos": grad[inputs.advantages > 0].sum(), "grad_mass_neg": grad[inputs.advantages < 0].sum()}


def _token_share(values: torch.Tensor, mask: torch.Tensor, norm: Normalizers) -> torch.Tensor:
    """This micro-batch's part of the update batch's per-token mean of `values`."""
    return masked_sum(values.detach().to(torch.float64), mask) / norm.num_tokens


def _token_metrics(
    inputs: LossInputs, terms: ObjectiveTerms, importance: ImportanceTerms,
    selections: dict[str, torch.Tensor], norm: Normalizers,
) -> dict[str, torch.Tensor]:
    def share(values: torch.Tensor) -> torch.Tensor:
        return _token_share(values, inputs.mask, norm)

    metrics = {
        "clip_frac_low": share(terms.clipped_low),
        "clip_frac_high": share(terms.clipped_high),
        "clip_frac_dual": share(terms.clipped_dual),
        "ratio_mean": share(importance.log_ratio.exp()),
        "logprob_mismatch": share((inputs.behavior_logprobs - inputs.logprobs).abs()),
    }
    if importance.weight is not None:
        metrics |= {"tis_weight_mean": share(importance.weight), "tis_frac_capped": share(importance.capped)}
    if inputs.entropy is not None:
        metrics["entropy"] = share(inputs.entropy)
    return metrics | {name: share(selected) for name, selected in selections.items()}


def policy_loss(
    inputs: LossInputs, norm: Normalizers, state: StepState, cfg: PolicyLossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss of one micro-batch (sum over micro-batches and ranks = whole-batch loss) and
    its additive metrics."""
    importance = importance_terms(inputs.logprobs, inputs.behavior_logprobs, inputs.proximal_logprobs, cfg.correction)
    bounds = (state.c_low, state.c_high)
    log_ratio = importance.log_ratio
    terms = objective_terms(cfg.objective, log_ratio, inputs.logprobs, inputs.advantages, inputs.mask, bounds)
    per_token = terms.loss if importance.weight is None else terms.loss * importance.weight
    per_token, selections = _apply_entropy_controls(per_token, inputs, terms, log_ratio, state, cfg)
    mode = cfg.aggregation_mode
    pg_loss = aggregate(mode, per_token, inputs.mask, norm)
    metrics = {"loss/policy": pg_loss.detach()} | _gradient_mass(pg_loss, inputs)
    metrics |= _token_metrics(inputs, terms, importance, selections, norm)
    loss = pg_loss
    if cfg.kl.coef > 0 and inputs.ref_logprobs is None:
        raise ValueError(f"kl.coef={cfg.kl.coef} needs ref_logprobs in LossInputs")
    if inputs.ref_logprobs is not None:
        kl = kl_penalty(inputs.logprobs, inputs.ref_logprobs, cfg.kl.estimator)
        metrics["kl"] = _token_share(kl, inputs.mask, norm)
        if cfg.kl.coef > 0:
            loss = loss + cfg.kl.coef * aggregate(mode, kl, inputs.mask, norm)
    if cfg.entropy_coef > 0:
        if inputs.entropy is None:
            raise ValueError(f"entropy_coef={cfg.entropy_coef} needs entropy in LossInputs")
        loss = loss - cfg.entropy_coef * aggregate(mode, inputs.entropy, inputs.mask, norm)
    metrics["loss/total"] = loss.detach()
    # One device-to-host copy for all metrics instead of a sync per value.
    values = torch.stack([value.to(torch.float64) for value in metrics.values()]).tolist()
    return loss, dict(zip(metrics, values))


def finalize_metrics(summed: dict[str, float]) -> dict[str, float]:
    """From metrics summed over micro-batches and ranks, adds the derived shares."""
    pos, neg = summed.get("grad_mass_pos", 0.0), summed.get("grad_mass_neg", 0.0)
    total = pos + neg
    shares = {"pos_grad_share": pos / total, "neg_grad_share": neg / total} if total > 0 else {}
    return summed | shares
