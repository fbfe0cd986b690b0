"""The game envs: TicTacToe and Kuhn poker against a fixed opponent, or in self-play.

Against an opponent (`tictactoe`, `kuhn_poker`) the policy plays the seat in the task's
metadata ("seat": 0 moves first); the opponent's moves are made inside the env and show in
the next observation, which is the whole position as the policy's seat sees it (see
tictactoe.py and kuhn.py for the texts). When the opponent moves first, the first
observation already shows its move. Every observation's `role` is the policy's role.

In self-play (`tictactoe_selfplay`, `kuhn_poker_selfplay`) the policy plays both seats: each
observation is addressed to the player to move (`role` set), and a step applies the move of
the role that was addressed last, so the rollout worker keeps one context per role in which
the other player's moves arrive as env text.

The move is the first non-whitespace character of the turn. An illegal or unparsable move
ends the game as a loss for the mover (the game's illegal-move payoff).

Rewards: 0 until the game ends; the final step's `reward` is the payoff of the role that just
moved, with parts {"outcome": payoff, "illegal_move": 1 or 0}, and in self-play
`role_rewards` gives the other role its payoff (the two sum to 0). The final step's
`metrics`, from the policy's seat (self-play: seat 0's): win, draw, loss, illegal_move (1 when
an illegal move ended the game; in self-play, by either seat) and, for Kuhn poker, chips.

The task's metadata["seed"] fixes the start (Kuhn poker's deal) and seeds the opponent's rng,
so one task with the same policy moves replays the same game. With `opponent: task` the opponent
of each game comes from the task's metadata["opponent"] ("self" for self-play, or an OPPONENTS
name): the `games` task source mixes them for training, by category.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.base import Action, Env, Observation, StepResult, Task, as_action, register_env
from envs.errors import EnvError, EpisodeStateError
from envs.games.game import Game, forfeit, outcome_metrics, parse_move
from envs.games.kuhn import KUHN_POKER
from envs.games.opponents import Player, make_opponent
from envs.games.tictactoe import TICTACTOE
from envs.single_turn import turn_info


def _task_int(task: Task, key: str, valid: range) -> int:
    value = task.metadata.get(key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value not in valid:
        raise EnvError(f"game task {task.task_id!r} needs metadata {key!r} in {valid}, got {value!r}")
    return int(value)


TASK_OPPONENT = "task"
SELF_PLAY = "self"


class GameEnv(Env):
    """One game of `game`; `opponent` plays the seat the policy does not, None for self-play, or
    TASK_OPPONENT to take it from each task."""

    def __init__(self, game: Game, opponent: Player | str | None) -> None:
        self.game = game
        self.opponent_from_task = opponent == TASK_OPPONENT
        self.opponent = None if self.opponent_from_task else opponent
        self._state: Any = None
        self._rng = np.random.default_rng(0)
        self._policy_seats: tuple[int, ...] = (0, 1)
        self._open = False

    def reset(self, task: Task) -> Observation:
        if task.metadata.get("game", self.game.name) != self.game.name:
            raise EnvError(f"task {task.task_id!r} is a {task.metadata['game']!r} game, "
                           f"this env plays {self.game.name!r}")
        seed = _task_int(task, "seed", range(2**63))
        if self.opponent_from_task:
            self.opponent = self._task_opponent(task)
        self._policy_seats = (0, 1) if self.opponent is None else (_task_int(task, "seat", range(2)),)
        self._state = self.game.initial_state(seed)
        self._rng = np.random.default_rng(seed)
        self._play_opponent()
        self._open = True
        return self._observation()

    def _task_opponent(self, task: Task) -> Player | None:
        name = task.metadata.get("opponent")
        if not isinstance(name, str):
            raise EnvError(f"game task {task.task_id!r} has no metadata 'opponent' (this env plays the task's)")
        return None if name == SELF_PLAY else make_opponent(name, self.game)

    def step(self, action: Action | str) -> StepResult:
        if not self._open:
            raise EpisodeStateError(f"{self.name}.step called before reset or after the game ended")
        action = as_action(action)
        mover = self.game.to_move(self._state)
        move = parse_move(action.text)
        info = turn_info(action) | {"move": move}
        if move not in self.game.legal_moves(self._state):
            return self._end(mover, forfeit(self.game, mover), True, info)
        self._state = self.game.apply(self._state, move)
        self._play_opponent()
        payoffs = self.game.outcome(self._state)
        if payoffs is not None:
            return self._end(mover, payoffs, False, info)
        return StepResult(self._observation(), reward=0.0, done=False, info=info)

    def _play_opponent(self) -> None:
        """The opponent's moves until a policy seat is to move or the game is over."""
        while self.game.outcome(self._state) is None and self.game.to_move(self._state) not in self._policy_seats:
            self._state = self.game.apply(self._state, self.opponent(self._state, self._rng))

    def _observation(self) -> Observation:
        seat = self.game.to_move(self._state)
        return Observation(text=self.game.observe(self._state, seat), role=self.game.roles[seat])

    def _end(self, mover: int, payoffs: tuple[float, float], illegal: bool, info: dict[str, Any]) -> StepResult:
        self._open = False
        others = {self.game.roles[seat]: payoffs[seat] for seat in self._policy_seats if seat != mover}
        metrics = outcome_metrics(self.game, payoffs[self._policy_seats[0]], illegal)
        return StepResult(None, reward=payoffs[mover], done=True, info=info, role_rewards=others, metrics=metrics,
                          reward_parts={"outcome": payoffs[mover], "illegal_move": float(illegal)})


@register_env("tictactoe")
class TicTacToeEnv(GameEnv):
    """TicTacToe against the OPPONENTS entry `opponent` ("random", "heuristic"), or the task's ("task")."""

    def __init__(self, opponent: str = "heuristic") -> None:
        super().__init__(TICTACTOE, opponent if opponent == TASK_OPPONENT else make_opponent(opponent, TICTACTOE))


@register_env("kuhn_poker")
class KuhnPokerEnv(GameEnv):
    """Kuhn poker against the OPPONENTS entry `opponent` ("random", "heuristic"), or the task's ("task")."""

    def __init__(self, opponent: str = "heuristic") -> None:
        super().__init__(KUHN_POKER, opponent if opponent == TASK_OPPONENT else make_opponent(opponent, KUHN_POKER))


@register_env("tictactoe_selfplay")
class TicTacToeSelfPlayEnv(GameEnv):
    """TicTacToe with the policy in both seats (roles "x" and "o")."""

    def __init__(self) -> None:
        super().__init__(TICTACTOE, None)


@register_env("kuhn_poker_selfplay")
class KuhnPokerSelfPlayEnv(GameEnv):
    """Kuhn poker with the policy in both seats (roles "p1" and "p2")."""

    def __init__(self) -> None:
        super().__init__(KUHN_POKER, None)
