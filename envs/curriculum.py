"""Curricula choose which task category to train on next; `TaskSampler` draws the tasks.

SEC (self-evolving curriculum): one bandit arm per category. After each batch,
r(c) = mean |A| over the batch's groups of category c, Q(c) <- a r(c) + (1 - a) Q(c),
and categories are sampled with softmax(Q / tau).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from envs.base import Task
from envs.errors import EnvError
from envs.tasks import TaskSource


class CurriculumConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["uniform", "sec"] = "uniform"
    """uniform: tasks uniformly from the whole training pool; sec: the SEC bandit over categories."""
    alpha: float = Field(0.5, gt=0.0, le=1.0)
    """SEC step size a in Q(c) <- a r(c) + (1 - a) Q(c)."""
    tau: float = Field(1.0, gt=0.0)
    """SEC softmax temperature."""


class Curriculum(Protocol):
    def sample_category(self, rng: np.random.Generator) -> str | None: ...

    def update(self, signals: Mapping[str, float]) -> None: ...

    def probabilities(self) -> dict[str, float]:
        """Category -> probability of the next draw (empty when no category is chosen)."""

    def state(self) -> dict:
        """What a checkpoint keeps (JSON-serialisable)."""

    def load_state(self, state: Mapping) -> None: ...


class UniformCurriculum:
    """No preference: the task source samples from its whole training pool."""

    def sample_category(self, rng: np.random.Generator) -> str | None:
        return None

    def update(self, signals: Mapping[str, float]) -> None:
        """Nothing to learn: uniform sampling ignores the learning signal."""

    def probabilities(self) -> dict[str, float]:
        return {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: Mapping) -> None:
        """Stateless."""


class SECCurriculum:
    def __init__(self, categories: Sequence[str], alpha: float, tau: float) -> None:
        if not categories:
            raise EnvError("SEC curriculum needs at least one category")
        if not (0.0 < alpha <= 1.0 and tau > 0.0):
            raise EnvError(f"SEC needs 0 < alpha <= 1 and tau > 0, got alpha={alpha}, tau={tau}")
        self.categories = list(categories)
        self.alpha = alpha
        self.tau = tau
        self.q = dict.fromkeys(self.categories, 0.0)

    def probabilities(self) -> dict[str, float]:
        logits = np.array([self.q[c] for c in self.categories]) / self.tau
        weights = np.exp(logits - logits.max())  # shifted for numerical safety; softmax is unchanged
        return dict(zip(self.categories, (weights / weights.sum()).tolist()))

    def sample_category(self, rng: np.random.Generator) -> str:
        probs = self.probabilities()
        return self.categories[rng.choice(len(self.categories), p=[probs[c] for c in self.categories])]

    def update(self, signals: Mapping[str, float]) -> None:
        """`signals[c]` = r(c) of this batch; categories absent from the batch keep their Q."""
        unknown = set(signals) - set(self.q)
        if unknown:
            raise EnvError(f"SEC update for unknown categories {sorted(unknown)}; known: {self.categories}")
        for category, reward in signals.items():
            self.q[category] = self.alpha * reward + (1.0 - self.alpha) * self.q[category]

    def state(self) -> dict:
        return {"q": dict(self.q)}

    def load_state(self, state: Mapping) -> None:
        if set(state["q"]) != set(self.q):
            raise EnvError(f"SEC state has categories {sorted(state['q'])}, this run has {self.categories}")
        self.q = {c: float(v) for c, v in state["q"].items()}


def mean_abs_advantage_by_category(groups: Iterable[tuple[str, Sequence[float]]]) -> dict[str, float]:
    """r(c) for SEC from (category, advantages of one group) pairs: the mean over groups of
    each group's mean |A|."""
    per_category: dict[str, list[float]] = defaultdict(list)
    for category, advantages in groups:
        per_category[category].append(float(np.mean(np.abs(advantages))))
    return {category: float(np.mean(values)) for category, values in per_category.items()}


def make_curriculum(config: CurriculumConfig, categories: Sequence[str]) -> Curriculum:
    if config.kind == "sec":
        return SECCurriculum(categories, config.alpha, config.tau)
    return UniformCurriculum()


class TaskSampler:
    """The training task stream of one worker: a curriculum picks the category, the source the task."""

    def __init__(self, source: TaskSource, curriculum: Curriculum, seed: int) -> None:
        self.source = source
        self.curriculum = curriculum
        self._rng = np.random.default_rng(seed)

    def next_task(self) -> Task:
        return self.source.sample(self._rng, self.curriculum.sample_category(self._rng))
