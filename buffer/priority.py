"""Initial priorities and importance weights (pure numpy: no Redis here)."""

from __future__ import annotations

import numpy as np


def learning_signal(rewards: np.ndarray) -> float:
    """Mean |R_i - mean R|: the mean absolute GRPO-style advantage of a group.

    Exactly 0.0 when all rewards are equal (a zero-variance group teaches nothing; under the
    prioritized selector it is never sampled: DAPO's dynamic sampling for free).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.size == 0 or np.all(rewards == rewards.flat[0]):
        return 0.0  # exact, not a rounding residue of mean()
    return float(np.mean(np.abs(rewards - rewards.mean())))


def importance_weights(probabilities: np.ndarray, num_items: int, beta: float) -> np.ndarray:
    """w_i = (N P_i)^-beta / max_j w_j over the sampled batch (Schaul et al., as in Reverb)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.size == 0:
        return probabilities
    raw = np.power(num_items * probabilities, -beta)
    return raw / raw.max()


def annealed_beta(beta: float, beta_final: float, anneal_versions: int, learner_version: int) -> float:
    """Linear schedule from `beta` to `beta_final` over the first `anneal_versions` policy versions."""
    if anneal_versions <= 0:
        return beta
    fraction = min(max(learner_version, 0) / anneal_versions, 1.0)
    return beta + fraction * (beta_final - beta)
