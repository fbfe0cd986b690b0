"""SPEAR-style self-imitation: replay the policy's own better-than-usual trajectories.

A buffer keeps positive-advantage trajectories with the policy version that produced them.
Before each replay, entries older than `max_staleness` versions are dropped and every
advantage is recalibrated against the CURRENT baseline, the median of recent group-mean
rewards: A = R - median; entries no longer above it (A <= 0) are dropped. The replayed
samples get the clipped policy loss (with Clip-Cov) at a weight that ramps up over
`warmup_steps` with a half cosine.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch

from learner.loss_config import SelfImitationConfig
from learner.losses import LossInputs, Normalizers, fixed_step_state, policy_loss


class Rewarded(Protocol):
    reward: float


# Any trajectory type with a `reward` (buffer.schema.Trajectory in the trainer); not imported here
# so that this module stays free of the replay client's dependencies.
T = TypeVar("T", bound=Rewarded)


@dataclass(frozen=True)
class ImitationEntry(Generic[T]):
    trajectory: T  # token arrays, behaviour logprobs, reward
    policy_version: int  # version that generated it (the newest, for partial rollouts)
    advantage: float  # recalibrated at the last refresh (the estimator's value when added)


class SelfImitationBuffer(Generic[T]):
    def __init__(self, cfg: SelfImitationConfig) -> None:
        self._cfg = cfg
        self._entries: deque[ImitationEntry[T]] = deque(maxlen=cfg.capacity)  # full: the oldest goes
        self._group_means: deque[float] = deque(maxlen=cfg.baseline_groups)

    def __len__(self) -> int:
        return len(self._entries)

    def observe_groups(self, group_rewards: Iterable[Sequence[float]]) -> None:
        """Record the mean reward of each trained group (the baseline's history)."""
        for rewards in group_rewards:
            self._group_means.append(float(np.mean(rewards)))

    def baseline(self) -> float | None:
        return float(np.median(self._group_means)) if self._group_means else None

    def add(self, trajectories: Sequence[T], advantages: Sequence[float], policy_version: int) -> int:
        """Keep the trajectories with a positive advantage; returns how many were kept. The caller
        pre-filters for task-specific conditions (SPEAR keeps only tool-using agent episodes)."""
        if len(trajectories) != len(advantages):
            raise ValueError(f"{len(trajectories)} trajectories but {len(advantages)} advantages")
        kept = [ImitationEntry(t, policy_version, float(a)) for t, a in zip(trajectories, advantages) if a > 0]
        self._entries.extend(kept)
        return len(kept)

    def refresh(self, current_version: int) -> list[ImitationEntry[T]]:
        """Drop stale entries, recalibrate advantages against the current baseline, drop A <= 0."""
        baseline = self.baseline()
        fresh = (e for e in self._entries if current_version - e.policy_version <= self._cfg.max_staleness)
        if baseline is not None:
            fresh = (ImitationEntry(e.trajectory, e.policy_version, e.trajectory.reward - baseline) for e in fresh)
        self._entries = deque((e for e in fresh if e.advantage > 0), maxlen=self._cfg.capacity)
        return list(self._entries)

    def sample(self, count: int, current_version: int, rng: np.random.Generator) -> list[ImitationEntry[T]]:
        """Up to `count` refreshed entries, uniformly without replacement."""
        entries = self.refresh(current_version)
        chosen = rng.choice(len(entries), size=min(count, len(entries)), replace=False)
        return [entries[i] for i in sorted(chosen)]

    def state(self, encode: Callable[[list[T]], bytes]) -> dict[str, Any]:
        """What a checkpoint keeps, as plain data: the entries (their trajectories as `encode` writes
        them) and the baseline's window."""
        return {"trajectories": encode([e.trajectory for e in self._entries]),
                "policy_versions": [e.policy_version for e in self._entries],
                "advantages": [e.advantage for e in self._entries],
                "group_means": list(self._group_means)}

    def load_state(self, state: Mapping[str, Any], decode: Callable[[bytes], list[T]]) -> None:
        """Inverse of `state` (`decode` reads what its `encode` wrote)."""
        fields = zip(decode(state["trajectories"]), state["policy_versions"], state["advantages"], strict=True)
        self._entries = deque((ImitationEntry(*entry) for entry in fields), maxlen=self._cfg.capacity)
        self._group_means = deque(state["group_means"], maxlen=self._cfg.baseline_groups)


def imitation_weight(step: int, cfg: SelfImitationConfig) -> float:
    """coef * (1 - cos(pi t / T)) / 2 for t < T = warmup_steps, then coef."""
    if step >= cfg.warmup_steps:
        return cfg.coef
    return cfg.coef * (1.0 - math.cos(math.pi * step / cfg.warmup_steps)) / 2.0


def self_imitation_loss(
    inputs: LossInputs,
    norm: Normalizers,
    step: int,
    cfg: SelfImitationConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted clipped loss on replayed samples (advantages: the recalibrated ones, broadcast
    per token; norm: over the replayed part of the update batch). Metrics are additive like
    `policy_loss`'s and unweighted; log `imitation_weight(step, cfg)` once per step."""
    loss_cfg = cfg.policy_loss_config()
    loss, metrics = policy_loss(inputs, norm, fixed_step_state(loss_cfg, generator), loss_cfg)
    return imitation_weight(step, cfg) * loss, {f"self_imitation/{name}": value for name, value in metrics.items()}
