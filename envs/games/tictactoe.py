"""TicTacToe rules and text: 3x3, x (seat 0, role "x") moves first, o (seat 1, role "o") second.

The state is the board text: the 9 cells row by row from the top left, each "x", "o" or "."
(empty), without separators, so `x.o......` has x in the top-left and o in the top-right
corner. A move is the number of an empty cell, one digit, in the same order:

    1 2 3
    4 5 6
    7 8 9

An observation is `{mark}:{board}`, the mark the player to move plays, then the board with each
empty cell shown as its number: `o:x23456789` is o to move after x took cell 1. So the legal
moves are exactly the digits in the observation (a small model learns to copy one far sooner
than to find the empty cells of a dotted board). Every observation shows the whole board, so
the opponent's last move is in it. Payoffs: win +1, draw 0, loss -1; an illegal or unparsable
move loses (-1). The starting board is always empty: the task's seed only seeds the opponent.
"""

from __future__ import annotations

from envs.errors import EnvError

EMPTY = "."
MARKS = ("x", "o")
CELLS = "123456789"
LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
"""The 8 winning lines as cell indices 0-8: rows, columns, diagonals."""


def winner(board: str) -> str | None:
    """The mark that owns a full line, or None."""
    for a, b, c in LINES:
        if board[a] != EMPTY and board[a] == board[b] == board[c]:
            return board[a]
    return None


def place(board: str, move: str, mark: str) -> str:
    """`board` with `mark` in cell `move` ("1"-"9"), whether or not that is legal."""
    index = CELLS.index(move)
    return board[:index] + mark + board[index + 1:]


class TicTacToe:
    name = "tictactoe"
    roles = MARKS
    illegal_move_payoff = -1.0
    payoff_metric = None
    alphabet = f"{EMPTY}:{''.join(MARKS)}{CELLS}"

    def initial_state(self, seed: int) -> str:
        return EMPTY * 9

    def to_move(self, board: str) -> int:
        return board.count(MARKS[0]) - board.count(MARKS[1])

    def legal_moves(self, board: str) -> tuple[str, ...]:
        if self.outcome(board) is not None:
            return ()
        return tuple(cell for cell, square in zip(CELLS, board, strict=True) if square == EMPTY)

    def apply(self, board: str, move: str) -> str:
        if move not in self.legal_moves(board):
            raise EnvError(f"illegal tictactoe move {move!r} on board {board!r}; legal: {self.legal_moves(board)}")
        return place(board, move, MARKS[self.to_move(board)])

    def outcome(self, board: str) -> tuple[float, float] | None:
        mark = winner(board)
        if mark is not None:
            return (1.0, -1.0) if mark == MARKS[0] else (-1.0, 1.0)
        return (0.0, 0.0) if EMPTY not in board else None

    def observe(self, board: str, seat: int) -> str:
        return f"{MARKS[seat]}:" + "".join(cell if square == EMPTY else square for cell, square in zip(CELLS, board))


TICTACTOE = TicTacToe()
