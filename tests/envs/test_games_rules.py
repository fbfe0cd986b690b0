import pytest

from envs import EnvError
from envs.games import INFOSETS, KUHN_POKER, TICTACTOE, KuhnState, parse_move
from envs.games.kuhn import DEALS
from envs.games.tictactoe import CELLS, LINES, winner

EMPTY = "........."


def board_with(cells: dict[int, str]) -> str:
    return "".join(cells.get(i, ".") for i in range(9))


# -- TicTacToe -----------------------------------------------------------------------------------

def test_empty_board_x_to_move_with_every_cell_legal():
    board = TICTACTOE.initial_state(seed=7)
    assert board == EMPTY
    assert TICTACTOE.to_move(board) == 0
    assert TICTACTOE.legal_moves(board) == tuple("123456789")
    assert TICTACTOE.outcome(board) is None
    assert TICTACTOE.observe(board, 0) == "x:123456789"


def test_moves_alternate_and_fill_cells_row_by_row():
    board = TICTACTOE.apply(EMPTY, "1")
    assert board == "x........" and TICTACTOE.to_move(board) == 1
    assert TICTACTOE.observe(board, 1) == "o:x23456789"
    board = TICTACTOE.apply(board, "6")
    assert board == "x....o..." and TICTACTOE.to_move(board) == 0
    assert "1" not in TICTACTOE.legal_moves(board) and "6" not in TICTACTOE.legal_moves(board)
    assert len(TICTACTOE.legal_moves(board)) == 7


@pytest.mark.parametrize("move", ["1", "0", "a", "", "12"])
def test_apply_rejects_illegal_moves_naming_them(move):
    with pytest.raises(EnvError, match=f"illegal tictactoe move {move!r}"):
        TICTACTOE.apply("x........", move)


@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize(("mark", "payoffs"), [("x", (1.0, -1.0)), ("o", (-1.0, 1.0))])
def test_every_line_wins(line, mark, payoffs):
    board = board_with(dict.fromkeys(line, mark))
    assert winner(board) == mark
    assert TICTACTOE.outcome(board) == payoffs
    assert TICTACTOE.legal_moves(board) == ()  # the game is over despite the empty cells


@pytest.mark.parametrize("line", LINES)
def test_two_of_a_line_or_a_mixed_line_is_no_win(line):
    a, b, c = line
    assert winner(board_with({a: "x", b: "x"})) is None
    assert winner(board_with({a: "x", b: "o", c: "x"})) is None


def test_full_board_without_a_line_is_a_draw():
    board = "xoxxoooxx"  # x o x / x o o / o x x: no row, column or diagonal of one mark
    assert winner(board) is None
    assert TICTACTOE.outcome(board) == (0.0, 0.0)
    assert TICTACTOE.legal_moves(board) == ()


def test_win_on_the_last_cell_is_a_win_not_a_draw():
    board = "xoxoxooxx"  # x o x / o x o / o x x: the diagonal 1-5-9
    assert TICTACTOE.outcome(board) == (1.0, -1.0)


def test_tictactoe_texts_use_only_its_alphabet():
    for text in (TICTACTOE.observe("xo.......", 0), TICTACTOE.observe("x........", 1), CELLS):
        assert set(text) <= set(TICTACTOE.alphabet)


@pytest.mark.parametrize(("text", "move"),
                         [("5", "5"), ("  5\n", "5"), ("57", "5"), ("", ""), (" \n", ""), ("b3", "b")])
def test_the_move_is_the_first_non_space_character(text, move):
    assert parse_move(text) == move


# -- Kuhn poker ----------------------------------------------------------------------------------

def test_seeds_cycle_through_the_six_deals():
    assert DEALS == ("JQ", "JK", "QJ", "QK", "KJ", "KQ")
    assert [KUHN_POKER.initial_state(seed).cards for seed in range(12)] == list(DEALS) * 2
    assert KUHN_POKER.initial_state(5) == KuhnState("KQ", "")


@pytest.mark.parametrize(("history", "to_move", "legal"), [
    ("", 0, ("c", "b")),    # player 1 opens: check or bet
    ("c", 1, ("c", "b")),   # player 2 after a check: check or bet
    ("b", 1, ("f", "c")),   # player 2 facing a bet: fold or call
    ("cb", 0, ("f", "c")),  # player 1 facing a bet: fold or call
])
def test_decision_points_and_their_legal_moves(history, to_move, legal):
    state = KuhnState("QK", history)
    assert KUHN_POKER.to_move(state) == to_move
    assert KUHN_POKER.legal_moves(state) == legal  # passive first, aggressive second
    assert KUHN_POKER.outcome(state) is None


# Player 1's payoff for every terminal history and deal: antes 1 each, one bet of 1.
# cc: showdown for the antes, +-1. bc / cbc: a called bet, +-2. bf: player 2 folds, +1. cbf: player 1 folds, -1.
PAYOFFS_P1 = {
    "JQ": {"cc": -1, "bc": -2, "bf": 1, "cbc": -2, "cbf": -1},
    "JK": {"cc": -1, "bc": -2, "bf": 1, "cbc": -2, "cbf": -1},
    "QJ": {"cc": 1, "bc": 2, "bf": 1, "cbc": 2, "cbf": -1},
    "QK": {"cc": -1, "bc": -2, "bf": 1, "cbc": -2, "cbf": -1},
    "KJ": {"cc": 1, "bc": 2, "bf": 1, "cbc": 2, "cbf": -1},
    "KQ": {"cc": 1, "bc": 2, "bf": 1, "cbc": 2, "cbf": -1},
}


@pytest.mark.parametrize("deal", DEALS)
@pytest.mark.parametrize("history", ["cc", "bc", "bf", "cbc", "cbf"])
def test_payoffs_of_every_terminal_history_are_zero_sum(deal, history):
    state = KuhnState(deal)
    for move in history:
        state = KUHN_POKER.apply(state, move)
    p1 = float(PAYOFFS_P1[deal][history])
    assert KUHN_POKER.outcome(state) == (p1, -p1)
    assert KUHN_POKER.legal_moves(state) == ()


@pytest.mark.parametrize(("history", "move"), [("", "f"), ("c", "f"), ("b", "b"), ("cb", "b"), ("", "x"), ("cc", "c")])
def test_kuhn_rejects_illegal_moves_naming_them(history, move):
    with pytest.raises(EnvError, match=f"illegal kuhn_poker move {move!r} after history {history!r}"):
        KUHN_POKER.apply(KuhnState("KQ", history), move)


def test_observation_is_own_card_and_history():
    state = KuhnState("KQ", "cb")
    assert KUHN_POKER.observe(state, 0) == "K:cb?"
    assert KUHN_POKER.observe(KuhnState("KQ", "b"), 1) == "Q:b?"
    assert set("K:cbf") <= set(KUHN_POKER.alphabet)


def test_twelve_information_sets_six_per_player():
    assert INFOSETS[0] == ("J:?", "J:cb?", "Q:?", "Q:cb?", "K:?", "K:cb?")
    assert INFOSETS[1] == ("J:c?", "J:b?", "Q:c?", "Q:b?", "K:c?", "K:b?")
