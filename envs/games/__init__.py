"""Two-player text games (TicTacToe, Kuhn poker) as multi-turn envs, against fixed opponents
or in self-play, with their task source and Kuhn poker's exact exploitability."""

from envs.games.env import GameEnv, KuhnPokerEnv, KuhnPokerSelfPlayEnv, TicTacToeEnv, TicTacToeSelfPlayEnv
from envs.games.exploitability import (
    NASH_VALUE,
    best_response_value,
    expected_value,
    exploitability,
    infoset_context,
    nash_strategies,
    strategy_from_policy,
)
from envs.games.game import Game, parse_move
from envs.games.kuhn import INFOSETS, KUHN_POKER, KuhnPoker, KuhnState, Strategy
from envs.games.opponents import KUHN_HEURISTIC, OPPONENTS, Player, make_opponent
from envs.games.tasks import GameTaskConfig, GameTasks
from envs.games.tictactoe import TICTACTOE, TicTacToe

__all__ = [
    "INFOSETS",
    "KUHN_HEURISTIC",
    "KUHN_POKER",
    "NASH_VALUE",
    "OPPONENTS",
    "TICTACTOE",
    "Game",
    "GameEnv",
    "GameTaskConfig",
    "GameTasks",
    "KuhnPoker",
    "KuhnPokerEnv",
    "KuhnPokerSelfPlayEnv",
    "KuhnState",
    "Player",
    "Strategy",
    "TicTacToe",
    "TicTacToeEnv",
    "TicTacToeSelfPlayEnv",
    "best_response_value",
    "expected_value",
    "exploitability",
    "infoset_context",
    "make_opponent",
    "nash_strategies",
    "parse_move",
    "strategy_from_policy",
]
