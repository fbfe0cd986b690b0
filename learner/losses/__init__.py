"""Policy-loss library of the learner: objectives, aggregation, corrections, BAPO, regularisers.

Imports torch only (no DeepSpeed, Ray, vLLM or Redis)."""

from learner.losses.aggregation import AGGREGATIONS, Normalizers, aggregate, compute_normalizers
from learner.losses.bapo import bapo_bounds, bapo_contribution_sums, bapo_ladder, select_bounds
from learner.losses.corrections import importance_ratio, importance_terms
from learner.losses.loss import LossInputs, StepState, finalize_metrics, fixed_step_state, policy_loss, prepare_step
from learner.losses.objectives import POLICY_LOSSES, ObjectiveTerms, clipped_surrogate, register_policy_loss
from learner.losses.regularizers import KL_ESTIMATORS, clip_cov_selection, kl_cov_selection, kl_penalty

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "LossInputs",
    "Normalizers",
    "ObjectiveTerms",
    "StepState",
    "aggregate",
    "bapo_bounds",
    "bapo_contribution_sums",
    "bapo_ladder",
    "clip_cov_selection",
    "clipped_surrogate",
    "compute_normalizers",
    "finalize_metrics",
    "fixed_step_state",
    "importance_ratio",
    "importance_terms",
    "kl_cov_selection",
    "kl_penalty",
    "policy_loss",
    "prepare_step",
    "register_policy_loss",
    "select_bounds",
]
