"""The game task source: a game is a seat and a seed, so a task is just those two numbers (and,
in a mix of opponents, who the opponent is).

Task ids are `{game}/seat{seat}/seed{seed}`, categories `seat0` and `seat1` (the seat the
policy plays against an opponent, where the first mover's advantage makes them two levels of
difficulty; self-play envs ignore the seat). With `opponents` (a training mix, for an env with
`opponent: task`) each task also names its opponent, and the categories are `self` and
`{opponent}/seat{seat}`: what the curriculum chooses among. The held-out games use
seeds 0.. and training seeds come from a range far above them, so a training task is never an
eval task. Tasks carry no prompt: the env renders the position from the metadata.
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
    """Held-out games, half in each seat, seeds 0..eval_games/2 - 1 (with `opponents`: against
    each fixed opponent). 120 gives each of Kuhn poker's 6 deals (seed % 6) 10 times per seat,
    so the eval averages over deals exactly."""
    opponents: list[str] = []
    """The training mix: "self" (self-play) and OPPONENTS names, one category each (per seat for a
    fixed opponent). Empty: tasks name no opponent (the env has its own)."""

    @model_validator(mode="after")
    def _even_split(self) -> GameTaskConfig:
        if self.eval_games % len(SEATS):
            raise ValueError(f"eval_games must be even (each seat equally often), got {self.eval_games}")
        from envs.games.opponents import OPPONENTS

        for name in self.opponents:
            if name != "self":
                OPPONENTS.check(name)
        return self


def game_task(game: str, seat: int, seed: int, opponent: str | None = None) -> Task:
    if opponent is None:
        return Task(task_id=f"{game}/seat{seat}/seed{seed}", category=f"seat{seat}", prompt="", answer="",
                    metadata={"game": game, "seat": seat, "seed": seed})
    category = opponent if opponent == "self" else f"{opponent}/seat{seat}"
    return Task(task_id=f"{game}/{opponent}/seat{seat}/seed{seed}", category=category, prompt="", answer="",
                metadata={"game": game, "seat": seat, "seed": seed, "opponent": opponent})


@register_task_source("games")
class GameTasks:
    """Seeded games of one two-player game, by the policy's seat."""

    def __init__(self, config: GameTaskConfig | None = None, **kwargs: Any) -> None:
        self.config = config or GameTaskConfig(**kwargs)
        # category -> (opponent, seat): the seat of a self-play game does not matter
        self._kinds = {f"seat{seat}": (None, seat) for seat in SEATS} if not self.config.opponents else {
            task.category: (name, seat) for name in self.config.opponents for seat in SEATS
            for task in [game_task(self.config.game, seat, 0, name)]}
        self.categories = list(self._kinds)

    def sample(self, rng: np.random.Generator, category: str | None = None) -> Task:
        if category is None:
            category = self.categories[int(rng.integers(len(self.categories)))]
        elif category not in self._kinds:
            raise EnvError(f"unknown category {category!r}; valid: {', '.join(self.categories)}")
        opponent, seat = self._kinds[category]
        if opponent == "self":
            seat = int(rng.integers(len(SEATS)))
        seed = int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop))
        return game_task(self.config.game, seat, seed, opponent)

    def eval_tasks(self) -> list[Task]:
        """Seeds 0..eval_games/2 - 1 in each seat, against each fixed opponent of the mix (self-play
        measures no strength), or self-play where the mix has no other: an env with `opponent: task`
        plays each task's opponent, a fixed-opponent eval env (`eval.envs`) ignores it."""
        per_seat = self.config.eval_games // len(SEATS)
        opponents = [name for name in self.config.opponents if name != "self"] or self.config.opponents or [None]
        return [game_task(self.config.game, seat, seed, opponent)
                for opponent in opponents for seed in range(per_seat) for seat in SEATS]
