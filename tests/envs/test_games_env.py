import numpy as np
import pytest

from envs import Action, EnvError, EpisodeStateError, Observation, Task, make_env, make_task_source
from envs.games import KUHN_POKER, TICTACTOE, GameEnv, KuhnState
from envs.games.kuhn import DEALS
from envs.games.tasks import game_task


def task(game: str, seat: int, seed: int = 3) -> Task:
    return game_task(game, seat, seed)


def legal_moves(observation: Observation) -> tuple[str, ...]:
    """The legal moves, read off the observation text (Kuhn's depend on the history only)."""
    position = observation.text[2:]
    if observation.role in TICTACTOE.roles:  # an empty cell shows its own number
        return tuple(c for c in position if c.isdigit())
    return KUHN_POKER.legal_moves(KuhnState("JQ", position))


def highest_cell(board, rng):
    """A scripted TicTacToe opponent: the highest free cell."""
    return TICTACTOE.legal_moves(board)[-1]


def play(env, first, moves):
    """Drive `env` as the rollout worker does: one list of (text, role) per role; returns the
    observations seen per role and the final result."""
    seen = {first.role: [first.text]}
    for move in moves:
        result = env.step(move)
        if result.done:
            return seen, result
        seen.setdefault(result.observation.role, []).append(result.observation.text)
    raise AssertionError("the game did not end")


# -- against an opponent -------------------------------------------------------------------------

def test_policy_moving_first_sees_the_empty_board_then_the_reply():
    env = make_env("tictactoe", opponent="random")
    first = env.reset(task("tictactoe", seat=0))
    assert (first.text, first.role) == ("x:123456789", "x")
    result = env.step(Action(text="5", token_ids=(9, 2)))
    assert not result.done and result.reward == 0.0 and result.observation.role == "x"
    board = result.observation.text[2:]
    assert result.observation.text[:2] == "x:" and board[4] == "x"
    assert board.count("o") == 1 and sum(c.isdigit() for c in board) == 7  # the opponent's reply is in the board
    assert result.info == {"finish_reason": "stop", "num_tokens": 2, "move": "5"}


def test_opponent_moving_first_is_already_in_the_first_observation():
    env = make_env("tictactoe", opponent="heuristic")
    first = env.reset(task("tictactoe", seat=1))
    assert first.role == "o" and first.text.startswith("o:")
    assert first.text[2:].count("x") == 1 and sum(c.isdigit() for c in first.text[2:]) == 8
    kuhn = make_env("kuhn_poker", opponent="heuristic")
    first = kuhn.reset(task("kuhn_poker", seat=1, seed=0))  # deal JQ: the policy holds Q
    assert first.role == "p2" and first.text in ("Q:c?", "Q:b?")


def test_policy_win_against_a_scripted_opponent():
    env = GameEnv(TICTACTOE, highest_cell)
    first = env.reset(task("tictactoe", seat=0))
    seen, result = play(env, first, ["1", "2", "3"])  # o answers 9 and 8; x completes the top row
    assert seen == {"x": ["x:123456789", "x:x2345678o", "x:xx34567oo"]}
    assert (result.done, result.observation, result.reward) == (True, None, 1.0)
    assert result.reward_parts == {"outcome": 1.0, "illegal_move": 0.0}
    assert result.role_rewards == {}  # the opponent is not a role of the episode
    assert result.metrics == {"win_rate": 1.0, "draw_rate": 0.0, "loss_rate": 0.0, "illegal_move_rate": 0.0}


def test_policy_loss_when_the_opponent_completes_a_line_after_its_move():
    env = GameEnv(TICTACTOE, lambda board, rng: TICTACTOE.legal_moves(board)[0])  # x takes the lowest free cell
    first = env.reset(task("tictactoe", seat=1))
    assert (first.text, first.role) == ("o:x23456789", "o")
    _, result = play(env, first, ["9", "8"])  # x: 1, 2, then 3 wins the top row after o's 8
    assert result.done and result.reward == -1.0
    assert result.metrics == {"win_rate": 0.0, "draw_rate": 0.0, "loss_rate": 1.0, "illegal_move_rate": 0.0}


@pytest.mark.parametrize("text", ["5", "0", "a", "", "   ", "x5"])
def test_illegal_or_unparsable_tictactoe_move_loses(text):
    env = GameEnv(TICTACTOE, lambda board, rng: "5")  # the opponent (x) opens in the centre
    env.reset(task("tictactoe", seat=1))
    result = env.step(text)
    assert result.done and result.reward == -1.0
    assert result.reward_parts == {"outcome": -1.0, "illegal_move": 1.0}
    assert result.metrics == {"win_rate": 0.0, "draw_rate": 0.0, "loss_rate": 1.0, "illegal_move_rate": 1.0}
    with pytest.raises(EpisodeStateError):
        env.step("1")


def test_illegal_kuhn_move_loses_two_chips():
    env = make_env("kuhn_poker", opponent="random")
    first = env.reset(task("kuhn_poker", seat=0, seed=4))
    assert first.text == "K:?"
    result = env.step("f")  # nothing to fold against at the opening
    assert result.done and result.reward == -2.0
    assert result.reward_parts == {"outcome": -2.0, "illegal_move": 1.0}
    assert result.metrics == {"win_rate": 0.0, "draw_rate": 0.0, "loss_rate": 1.0, "illegal_move_rate": 1.0, "chips": -2.0}


def test_kuhn_chips_against_the_heuristic():
    # Deal KQ (seed 5), policy p1 bets K; the heuristic calls with Q: a called bet, +2.
    env = make_env("kuhn_poker")
    assert env.reset(task("kuhn_poker", seat=0, seed=5)).text == "K:?"
    result = env.step(" b")
    assert result.done and result.reward == 2.0
    assert result.metrics == {"win_rate": 1.0, "draw_rate": 0.0, "loss_rate": 0.0, "illegal_move_rate": 0.0, "chips": 2.0}


@pytest.mark.parametrize(("name", "game"), [("tictactoe", "tictactoe"), ("kuhn_poker", "kuhn_poker")])
def test_same_task_and_moves_replay_the_same_game(name, game):
    def observations(seed):
        env = make_env(name, opponent="random")
        observation = env.reset(task(game, seat=1, seed=seed))
        texts = [observation.text]
        while True:
            result = env.step(legal_moves(observation)[0])
            if result.done:
                return texts + [result.reward]
            observation = result.observation
            texts.append(observation.text)

    assert observations(11) == observations(11)
    assert len({tuple(observations(seed)) for seed in range(30)}) > 1  # the seed is what varies the games


def test_the_seed_fixes_the_kuhn_deal():
    env = make_env("kuhn_poker")
    assert [env.reset(task("kuhn_poker", seat=0, seed=s)).text[0] for s in range(6)] == [d[0] for d in DEALS]


def test_task_metadata_is_checked():
    env = make_env("tictactoe")
    with pytest.raises(EnvError, match=r"needs metadata 'seat' in range\(0, 2\), got 2"):
        env.reset(task("tictactoe", seat=2))
    with pytest.raises(EnvError, match="needs metadata 'seed'"):
        env.reset(Task("t", "seat0", "", "", {"seat": 0}))
    with pytest.raises(EnvError, match="is a 'kuhn_poker' game, this env plays 'tictactoe'"):
        env.reset(task("kuhn_poker", seat=0))
    with pytest.raises(EpisodeStateError):
        make_env("kuhn_poker").step("c")  # before reset


# -- self-play -----------------------------------------------------------------------------------

def test_selfplay_alternates_roles_and_rewards_both_zero_sum():
    env = make_env("tictactoe_selfplay")
    first = env.reset(task("tictactoe", seat=1))  # the seat does not matter in self-play
    assert (first.text, first.role) == ("x:123456789", "x")
    seen, result = play(env, first, ["1", "4", "2", "5", "3"])
    assert seen == {"x": ["x:123456789", "x:x23o56789", "x:xx3oo6789"],
                    "o": ["o:x23456789", "o:xx3o56789"]}
    assert result.reward == 1.0 and result.role_rewards == {"o": -1.0}  # x moved last and won
    assert result.reward_parts == {"outcome": 1.0, "illegal_move": 0.0}
    assert result.metrics == {"win_rate": 1.0, "draw_rate": 0.0, "loss_rate": 0.0, "illegal_move_rate": 0.0}  # seat 0's view


def test_selfplay_draw():
    env = make_env("tictactoe_selfplay")
    _, result = play(env, env.reset(task("tictactoe", 0)), ["1", "2", "3", "5", "4", "6", "8", "7", "9"])
    # x o x / x o o / o x x after these moves: no line
    assert (result.reward, result.role_rewards) == (0.0, {"o": 0.0})
    assert result.metrics["draw_rate"] == 1.0


def test_selfplay_illegal_move_gives_the_other_role_the_win():
    env = make_env("tictactoe_selfplay")
    env.reset(task("tictactoe", 0))
    assert env.step("5").observation.role == "o"
    result = env.step("5")  # o plays the occupied centre
    assert result.reward == -1.0 and result.role_rewards == {"x": 1.0}
    assert result.reward_parts["illegal_move"] == 1.0
    assert result.metrics == {"win_rate": 1.0, "draw_rate": 0.0, "loss_rate": 0.0, "illegal_move_rate": 1.0}


@pytest.mark.parametrize("history", ["cc", "bc", "bf", "cbc", "cbf"])
def test_kuhn_selfplay_roles_and_zero_sum_payoffs(history):
    env = make_env("kuhn_poker_selfplay")
    observation = env.reset(task("kuhn_poker", 0, seed=5))  # deal KQ
    roles = []
    for move in history:
        roles.append(observation.role)
        result = env.step(move)
        observation = result.observation
    assert roles == ["p1", "p2", "p1"][:len(history)]
    assert result.done
    mover, other = ("p1", "p2") if len(history) % 2 else ("p2", "p1")
    assert set(result.role_rewards) == {other}
    assert result.reward + result.role_rewards[other] == 0.0
    p1 = result.reward if mover == "p1" else result.role_rewards["p1"]
    assert p1 == KUHN_POKER.outcome(KuhnState("KQ", history))[0]
    assert result.metrics["chips"] == p1


def test_selfplay_contexts_show_the_other_players_moves():
    env = make_env("kuhn_poker_selfplay")
    seen, _ = play(env, env.reset(task("kuhn_poker", 0, seed=0)), ["c", "b", "c"])  # deal JQ
    assert seen == {"p1": ["J:?", "J:cb?"], "p2": ["Q:c?"]}


def test_every_env_runs_every_eval_game():
    for game, names in {"tictactoe": ("tictactoe", "tictactoe_selfplay"),
                        "kuhn_poker": ("kuhn_poker", "kuhn_poker_selfplay")}.items():
        for name in names:
            env = make_env(name)
            rng = np.random.default_rng(0)
            for t in make_task_source("games", game=game, eval_games=20).eval_tasks():
                observation = env.reset(t)
                while observation is not None:
                    assert observation.role in env.game.roles
                    result = env.step(str(rng.choice(legal_moves(observation))))
                    observation = result.observation
                assert result.done and set(result.metrics) >= {"win_rate", "draw_rate", "loss_rate", "illegal_move_rate"}
