"""The game task source: a game is a seat and a seed, so a task is just those two numbers.

Task ids are `{game}/seat{seat}/seed{seed}`, categories `seat0` and `seat1` (the seat the
policy plays against an opponent, where the first mover's advantage makes them two levels of
difficulty; self-play envs ignore the seat). The held-out games use seeds 0.. and training
seeds come from a range far above them, so a training task is never an eval task. Tasks carry
no prompt: the env renders the position from metadata {"game", "seat", "seed"}.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from envs.base import Task
from envs.errors import EnvError
from envs.tasks import register_task_source

SEATS = (0, 1)
MAX_EVAL_GAMES = 2**20
TRAIN_SEEDS = range(2**30, 2**31)
"""Disjoint from the eval seeds 0..MAX_EVAL_GAMES/2 - 1."""


class GameTaskConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    game: Literal["tictactoe", "kuhn_poker"] = "tictactoe"
    """The game of every task; the env checks that it plays the same one."""
    eval_games: int = Field(120, ge=2, le=MAX_EVAL_GAMES)
    """Held-out games, half in each seat, seeds 0..eval_games/2 - 1. 120 gives each of Kuhn
    poker's 6 deals (seed % 6) 10 times per seat, so the eval averages over deals exactly."""

    @model_validator(mode="after")
    def _even_split(self) -> GameTaskConfig:
        if self.eval_games % len(SEATS):
            raise ValueError(f"eval_games must be even (each seat equally often), got {self.eval_games}")
        return self


def game_task(game: str, seat: int, seed: int) -> Task:
    return Task(task_id=f"{game}/seat{seat}/seed{seed}", category=f"seat{seat}", prompt="", answer="",
                metadata={"game": game, "seat": seat, "seed": seed})


@register_task_source("games")
class GameTasks:
    """Seeded games of one two-player game, by the policy's seat."""

    def __init__(self, config: GameTaskConfig | None = None, **kwargs: Any) -> None:
        self.config = config or GameTaskConfig(**kwargs)
        self.categories = [f"seat{seat}" for seat in SEATS]

    def sample(self, rng: np.random.Generator, category: str | None = None) -> Task:
        if category is None:
            seat = int(rng.integers(len(SEATS)))
        elif category in self.categories:
            seat = self.categories.index(category)
        else:
            raise EnvError(f"unknown category {category!r}; valid: {', '.join(self.categories)}")
        seed = int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop))
        return game_task(self.config.game, seat, seed)

    def eval_tasks(self) -> list[Task]:
        per_seat = self.config.eval_games // len(SEATS)
        return [game_task(self.config.game, seat, seed) for seed in range(per_seat) for seat in SEATS]
