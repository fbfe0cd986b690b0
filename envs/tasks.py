"""Task sources: seeded training streams and a fixed held-out eval set per source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from envs.base import Task
from envs.errors import EnvError
from envs.registry import Registry


class TaskSource(Protocol):
    categories: list[str]

    def sample(self, rng: np.random.Generator, category: str | None = None) -> Task:
        """A training task (never one of `eval_tasks`), from `category` or from all of them."""
        ...

    def eval_tasks(self) -> list[Task]:
        """The held-out set: the same tasks in the same order on every call and every run."""
        ...


TASK_SOURCES: Registry[Callable[..., TaskSource]] = Registry("task source")
register_task_source = TASK_SOURCES.register


def make_task_source(name: str, **kwargs: Any) -> TaskSource:
    return TASK_SOURCES.get(name)(**kwargs)


class ArithmeticTaskConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_operand: int = Field(49, ge=1, le=999)
    """Operands a, b are drawn from 0..max_operand; 49 is small enough for the demo model."""
    eval_size: int = Field(256, ge=1)
    """Size of the held-out set; its pairs (and their swaps b+a) never appear in training."""
    eval_seed: int = 1234
    """Fixes the held-out set; independent of the training seed so runs share one eval set."""

    @model_validator(mode="after")
    def _leave_room_for_training(self) -> ArithmeticTaskConfig:
        num_pairs = (self.max_operand + 1) ** 2
        if 4 * self.eval_size > num_pairs:  # eval pairs and their swaps must leave most pairs to train on
            raise ValueError(f"eval_size={self.eval_size} is too large for max_operand={self.max_operand}")
        return self


def count_carries(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Carries of the column addition a + b (non-negative), elementwise over arrays."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    carries = np.zeros(np.broadcast(a, b).shape, dtype=np.int64)
    carry = np.zeros_like(carries)
    while a.any() or b.any():
        carry = (a % 10 + b % 10 + carry >= 10).astype(np.int64)
        carries += carry
        a, b = a // 10, b // 10
    return carries


def addition_task(a: int, b: int) -> Task:
    return Task(
        task_id=f"add/{a}+{b}",
        category=f"carries={int(count_carries(a, b))}",
        prompt=f"{a}+{b}=",
        answer=str(a + b),
        metadata={"a": a, "b": b},
    )


@register_task_source("arithmetic")
class ArithmeticTasks:
    """Addition problems "a+b=" with categories by number of carries (the curriculum's arms)."""

    def __init__(self, config: ArithmeticTaskConfig | None = None, **kwargs: Any) -> None:
        self.config = config or ArithmeticTaskConfig(**kwargs)
        side = self.config.max_operand + 1
        a, b = np.divmod(np.arange(side * side), side)
        eval_rng = np.random.default_rng(self.config.eval_seed)
        self._eval_pairs = eval_rng.choice(side * side, size=self.config.eval_size, replace=False)
        held_out = np.zeros(side * side, dtype=bool)
        held_out[self._eval_pairs] = True
        held_out[b[self._eval_pairs] * side + a[self._eval_pairs]] = True  # the swap b+a is the same problem
        carries = count_carries(a, b)
        train = ~held_out
        self._side = side
        self._train_by_category = {
            f"carries={k}": np.flatnonzero(train & (carries == k)) for k in np.unique(carries[train])
        }
        self._train_all = np.flatnonzero(train)
        self.categories = sorted(self._train_by_category)

    def _task(self, index: int) -> Task:
        a, b = divmod(int(index), self._side)
        return addition_task(a, b)

    def sample(self, rng: np.random.Generator, category: str | None = None) -> Task:
        if category is None:
            pool = self._train_all
        elif category in self._train_by_category:
            pool = self._train_by_category[category]
        else:
            raise EnvError(f"unknown category {category!r}; valid: {', '.join(self.categories)}")
        return self._task(pool[rng.integers(len(pool))])

    def train_tasks(self) -> list[Task]:
        """Every training task once, in a fixed order (the SFT warm start's data)."""
        return [self._task(i) for i in self._train_all]

    def eval_tasks(self) -> list[Task]:
        return [self._task(i) for i in self._eval_pairs]
