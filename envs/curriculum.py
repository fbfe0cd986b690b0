"""Curricula choose the category of the next task (the admission controller asks for each group).

Both bandits learn from r(c), the mean |A| over a batch's groups of category c (how much the
learner is learning from that category; a group with no learning signal counts 0).
SEC (self-evolving curriculum): one arm per category, Q(c) <- a r(c) + (1 - a) Q(c), and
categories are sampled with softmax(Q / tau).
DUMP: UCB over the categories: score(c) = mean of the last `window` r(c) + c_ucb *
sqrt(log(total) / count(c)), where count(c) is how often c was observed and total the sum of
counts; categories are sampled with softmax(score / tau), and one never observed comes first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from envs.errors import EnvError


class CurriculumConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["uniform", "sec", "dump"] = "uniform"
    """uniform: tasks uniformly from the whole training pool; sec / dump: a bandit over categories."""
    alpha: float = Field(0.5, gt=0.0, le=1.0)
    """SEC step size a in Q(c) <- a r(c) + (1 - a) Q(c)."""
    tau: float = Field(1.0, gt=0.0)
    """Softmax temperature of SEC's Q and of DUMP's scores."""
    ucb_c: float = Field(0.1, ge=0.0)
    """DUMP's exploration weight c_ucb."""
    window: int = Field(50, ge=1)
    """DUMP: the recent r(c) values a category's mean is taken over."""


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


class DUMPCurriculum:
    def __init__(self, categories: Sequence[str], ucb_c: float, tau: float, window: int) -> None:
        if not categories:
            raise EnvError("DUMP curriculum needs at least one category")
        if ucb_c < 0 or tau <= 0 or window < 1:
            raise EnvError(f"DUMP needs ucb_c >= 0, tau > 0, window >= 1, got {ucb_c}, {tau}, {window}")
        self.categories = list(categories)
        self.ucb_c, self.tau, self.window = ucb_c, tau, window
        self.recent: dict[str, list[float]] = {c: [] for c in self.categories}
        self.counts = dict.fromkeys(self.categories, 0)

    def scores(self) -> dict[str, float]:
        """UCB score per category; +inf for one never observed."""
        total = sum(self.counts.values())
        return {c: (float(np.mean(self.recent[c])) + self.ucb_c * math.sqrt(math.log(total) / self.counts[c])
                    if self.counts[c] else math.inf) for c in self.categories}

    def probabilities(self) -> dict[str, float]:
        scores = np.array([self.scores()[c] for c in self.categories])
        if np.isinf(scores).any():  # explore what was never observed, evenly
            weights = np.isinf(scores).astype(float)
        else:
            weights = np.exp((scores - scores.max()) / self.tau)
        return dict(zip(self.categories, (weights / weights.sum()).tolist()))

    def sample_category(self, rng: np.random.Generator) -> str:
        probs = self.probabilities()
        return self.categories[rng.choice(len(self.categories), p=[probs[c] for c in self.categories])]

    def update(self, signals: Mapping[str, float]) -> None:
        unknown = set(signals) - set(self.counts)
        if unknown:
            raise EnvError(f"DUMP update for unknown categories {sorted(unknown)}; known: {self.categories}")
        for category, reward in signals.items():
            self.recent[category] = (self.recent[category] + [float(reward)])[-self.window:]
            self.counts[category] += 1

    def state(self) -> dict:
        return {"recent": {c: list(v) for c, v in self.recent.items()}, "counts": dict(self.counts)}

    def load_state(self, state: Mapping) -> None:
        if set(state["counts"]) != set(self.counts):
            raise EnvError(f"DUMP state has categories {sorted(state['counts'])}, this run has {self.categories}")
        self.recent = {c: [float(x) for x in v] for c, v in state["recent"].items()}
        self.counts = {c: int(v) for c, v in state["counts"].items()}


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
    if config.kind == "dump":
        return DUMPCurriculum(categories, config.ucb_c, config.tau, config.window)
    return UniformCurriculum()
