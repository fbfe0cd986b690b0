import numpy as np
import pytest

from envs import OPPONENTS, EnvError, UnknownNameError
from envs.games import KUHN_POKER, TICTACTOE, KuhnState, make_opponent
from envs.games.tictactoe import LINES, place, winner


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_opponent_registry_names():
    assert OPPONENTS.names() == ["heuristic", "random"]
    with pytest.raises(UnknownNameError, match="unknown opponent 'greedy'; valid names: heuristic, random"):
        make_opponent("greedy", TICTACTOE)


def test_heuristic_needs_a_game_it_knows():
    class Chess:
        name = "chess"

    with pytest.raises(EnvError, match="no heuristic opponent for game 'chess'"):
        make_opponent("heuristic", Chess())


@pytest.mark.parametrize(("game", "state"), [(TICTACTOE, "x...o...."), (KUHN_POKER, KuhnState("QK", "b"))])
def test_random_player_is_legal_uniform_and_seeded(game, state):
    player = make_opponent("random", game)
    moves = [player(state, rng(seed)) for seed in range(400)]
    legal = game.legal_moves(state)
    assert set(moves) == set(legal)  # every legal move, and only those
    assert min(moves.count(m) for m in legal) > 400 / len(legal) / 2  # roughly uniform
    assert moves == [player(state, rng(seed)) for seed in range(400)]  # the seed fixes the move


@pytest.mark.parametrize("line", LINES)
def test_tictactoe_heuristic_completes_its_line(line):
    # x holds two cells of `line`, o two cells off it; x to move must win (on this or another line).
    a, b, c = line
    others = [i for i in range(9) if i not in line]
    board = "".join("x" if i in (a, b) else "o" if i in others[:2] else "." for i in range(9))
    player = make_opponent("heuristic", TICTACTOE)
    for seed in range(20):
        move = player(board, rng(seed))
        assert winner(place(board, move, "x")) == "x", (board, move)


@pytest.mark.parametrize(("board", "block"), [
    ("xx..o....", "3"),  # x threatens the top row
    ("x...o...x", None),  # no threat: x's 1 and 9 share only the diagonal, which o holds
    ("x..x..o..", None),  # the left column is blocked already
    ("o...x...x", None),  # x's 5 and 9 share the diagonal 1-5-9, which o holds
    ("..x.x.o..", None),  # the anti-diagonal 3-5-7 is held by o
    (".x..x..o.", None),
    ("x.x.o....", "2"),
    ("o..xx....", "6"),
])
def test_tictactoe_heuristic_blocks(board, block):
    player = make_opponent("heuristic", TICTACTOE)
    assert TICTACTOE.to_move(board) == 1
    moves = {player(board, rng(seed)) for seed in range(50)}
    if block is None:
        assert len(moves) > 1  # no threat and no win of its own: random among the legal moves
    else:
        assert moves == {block}


def test_tictactoe_heuristic_prefers_its_win_to_a_block():
    board = "xx.oo.x.."  # o to move: x threatens cell 3, o wins at cell 6
    player = make_opponent("heuristic", TICTACTOE)
    assert {player(board, rng(seed)) for seed in range(50)} == {"6"}


def test_kuhn_heuristic_plays_its_documented_strategy():
    player = make_opponent("heuristic", KUHN_POKER)
    always = {  # (deal, history) -> the move; the mover's card is deal[len(history) % 2]
        ("KQ", ""): "b", ("QK", ""): "c", ("KJ", "cb"): "c", ("QK", "cb"): "c", ("JK", "cb"): "f",  # p1
        ("JK", "c"): "b", ("JQ", "c"): "c", ("JK", "b"): "c", ("JQ", "b"): "c", ("QJ", "b"): "f",  # p2
    }
    for (cards, history), move in always.items():
        state = KuhnState(cards, history)
        assert {player(state, rng(seed)) for seed in range(50)} == {move}, (cards, history)
    for cards, history in (("JQ", ""), ("QJ", "c")):  # J may bluff where nothing is bet yet
        bluffs = [player(KuhnState(cards, history), rng(seed)) for seed in range(4000)]
        assert set(bluffs) == {"b", "c"}
        assert bluffs.count("b") / 4000 == pytest.approx(0.25, abs=0.03)  # the bluff probability 1/4
