"""What a two-player, zero-sum, turn-based text game is to the envs, opponents and evaluators.

A game is pure rules over immutable states, so that an env, an opponent and an exact solver
(Kuhn poker's exploitability) all run the same code. Seat 0 moves first. Every move is one
character, so a model's turn is read the same way in every game (`parse_move`): the move is
the first character after leading whitespace; anything after it is ignored.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

S = TypeVar("S")


class Game(Protocol[S]):
    name: str
    """The game's name in task ids and task metadata ("tictactoe", "kuhn_poker")."""
    roles: tuple[str, str]
    """The `Observation.role` of seat 0 (the first mover) and of seat 1."""
    illegal_move_payoff: float
    """What a player gets for an illegal or unparsable move (the game ends; the other gets minus it)."""
    payoff_metric: str | None
    """The episode metric that reports the payoff itself, where win/draw/loss do not say it all."""
    alphabet: str
    """Every character of this game's observations and moves (a character tokenizer needs them)."""

    def initial_state(self, seed: int) -> S:
        """The starting position; `seed` fixes whatever is random in it (Kuhn poker's deal)."""
        ...

    def to_move(self, state: S) -> int:
        """The seat whose move it is (meaningless once the game is over)."""
        ...

    def legal_moves(self, state: S) -> tuple[str, ...]:
        """The moves of the player to move, one character each; empty once the game is over."""
        ...

    def apply(self, state: S, move: str) -> S:
        """The state after `move`; EnvError if it is not legal."""
        ...

    def outcome(self, state: S) -> tuple[float, float] | None:
        """The payoffs of seats 0 and 1 (summing to 0) once the game is over, else None."""
        ...

    def observe(self, state: S, seat: int) -> str:
        """What `seat` sees: its private information and the public position, one short line."""
        ...


def parse_move(text: str) -> str:
    """The move a model's turn names: its first non-whitespace character ("" if it has none)."""
    return text.lstrip()[:1]


def forfeit(game: Game, mover: int) -> tuple[float, float]:
    """The payoffs when `mover` makes an illegal move: it gets the game's illegal-move payoff."""
    loss = game.illegal_move_payoff
    return (loss, -loss) if mover == 0 else (-loss, loss)


def outcome_metrics(game: Game, payoff: float, illegal: bool) -> dict[str, float]:
    """One player's evaluation measures of a finished game, each 1/0, so that their means over
    games are rates (plus the payoff itself where the game names a payoff metric)."""
    metrics = {"win_rate": float(payoff > 0), "draw_rate": float(payoff == 0), "loss_rate": float(payoff < 0),
               "illegal_move_rate": float(illegal)}
    if game.payoff_metric is not None:
        metrics[game.payoff_metric] = payoff
    return metrics
