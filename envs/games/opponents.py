"""Fixed opponents for the game envs, in the `OPPONENTS` registry.

An entry is a factory `(game) -> Player`; a player maps a state (where it is to move) and the
episode's rng to a legal move. Players keep no state of their own: all randomness comes from
the rng the env seeds from the task, so the same task and the same policy moves replay the
same game.

    random     a uniformly random legal move (any game)
    heuristic  TicTacToe: complete a line of its own if it can, else block one of the
               opponent's, else a random legal move. Kuhn poker: the strategy table
               `KUHN_HEURISTIC`: always bet or call with K, check and call with Q, check
               and fold with J except a bluff bet with probability 1/4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from envs.errors import EnvError
from envs.games.game import Game
from envs.games.kuhn import KUHN_POKER, KuhnState, Strategy
from envs.games.tictactoe import MARKS, TICTACTOE, place, winner
from envs.registry import Registry

Player = Callable[[Any, np.random.Generator], str]
OPPONENTS: Registry[Callable[[Game], Player]] = Registry("opponent")

KUHN_BLUFF = 0.25
KUHN_HEURISTIC: tuple[Strategy, Strategy] = (
    {"J:?": KUHN_BLUFF, "J:cb?": 0.0, "Q:?": 0.0, "Q:cb?": 1.0, "K:?": 1.0, "K:cb?": 1.0},
    {"J:c?": KUHN_BLUFF, "J:b?": 0.0, "Q:c?": 0.0, "Q:b?": 1.0, "K:c?": 1.0, "K:b?": 1.0},
)
"""Player 1's and player 2's information sets -> probability of betting / calling."""


def make_opponent(name: str, game: Game) -> Player:
    return OPPONENTS.get(name)(game)


def _choose(moves: tuple[str, ...] | list[str], rng: np.random.Generator) -> str:
    return moves[int(rng.integers(len(moves)))]


@OPPONENTS.register("random")
def random_player(game: Game) -> Player:
    return lambda state, rng: _choose(game.legal_moves(state), rng)


def tictactoe_heuristic(board: str, rng: np.random.Generator) -> str:
    """A winning move if there is one, else a move that stops the opponent's, else any legal move."""
    legal = TICTACTOE.legal_moves(board)
    seat = TICTACTOE.to_move(board)
    for mark in (MARKS[seat], MARKS[1 - seat]):  # own line first, then the opponent's
        completing = [move for move in legal if winner(place(board, move, mark)) == mark]
        if completing:
            return _choose(completing, rng)
    return _choose(legal, rng)


def strategy_player(strategies: tuple[Strategy, Strategy]) -> Player:
    """Kuhn poker by tables of aggressive-move probabilities, one per seat (`kuhn.Strategy`)."""

    def move(state: KuhnState, rng: np.random.Generator) -> str:
        passive, aggressive = KUHN_POKER.legal_moves(state)
        seat = KUHN_POKER.to_move(state)
        return aggressive if rng.random() < strategies[seat][KUHN_POKER.observe(state, seat)] else passive

    return move


_HEURISTICS: dict[str, Player] = {TICTACTOE.name: tictactoe_heuristic, KUHN_POKER.name: strategy_player(KUHN_HEURISTIC)}


@OPPONENTS.register("heuristic")
def heuristic_player(game: Game) -> Player:
    if game.name not in _HEURISTICS:
        raise EnvError(f"no heuristic opponent for game {game.name!r}; games with one: {sorted(_HEURISTICS)}")
    return _HEURISTICS[game.name]
