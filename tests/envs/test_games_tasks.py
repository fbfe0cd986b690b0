from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from envs import EnvError, GameTaskConfig, GameTasks, make_task_source
from envs.games.kuhn import DEALS


def test_eval_games_are_fixed_with_each_seat_equally_often():
    source = make_task_source("games", game="kuhn_poker", eval_games=120)
    held_out = source.eval_tasks()
    assert held_out == GameTasks(game="kuhn_poker", eval_games=120).eval_tasks()  # across instances and calls
    assert len({t.task_id for t in held_out}) == 120
    assert Counter(t.category for t in held_out) == {"seat0": 60, "seat1": 60}
    assert held_out[0].task_id == "kuhn_poker/seat0/seed0"
    assert held_out[0].metadata == {"game": "kuhn_poker", "seat": 0, "seed": 0}
    deals = Counter((t.metadata["seat"], DEALS[t.metadata["seed"] % 6]) for t in held_out)
    assert set(deals.values()) == {10}  # every deal 10 times per seat


def test_training_tasks_never_equal_eval_tasks():
    source = GameTasks(game="tictactoe")
    held_out = {t.task_id for t in source.eval_tasks()}
    rng = np.random.default_rng(0)
    sampled = [source.sample(rng) for _ in range(2000)]
    assert not held_out & {t.task_id for t in sampled}
    assert Counter(t.category for t in sampled).keys() == {"seat0", "seat1"}
    assert len({t.metadata["seed"] for t in sampled}) > 1990


def test_categories_are_the_seats():
    source = GameTasks()
    assert source.categories == ["seat0", "seat1"]
    rng = np.random.default_rng(1)
    assert {source.sample(rng, "seat1").metadata["seat"] for _ in range(20)} == {1}
    with pytest.raises(EnvError, match="unknown category 'seat2'; valid: seat0, seat1"):
        source.sample(rng, "seat2")


def test_training_stream_is_seeded():
    """One generator drives the whole stream: the same seed gives the same 20 tasks, another seed others."""
    source = GameTasks()

    def stream(seed):
        rng = np.random.default_rng(seed)
        return [source.sample(rng).task_id for _ in range(20)]

    assert stream(7) == stream(7)
    assert stream(7) != stream(8)


@pytest.mark.parametrize(("params", "message"), [
    ({"eval_games": 7}, "eval_games must be even"),
    ({"eval_games": 0}, r"eval_games\s+Input should be greater than or equal to 2"),
    ({"game": "chess"}, r"game\s+Input should be 'tictactoe' or 'kuhn_poker'"),
    ({"seats": 2}, r"seats\s+Extra inputs are not permitted"),
])
def test_config_is_validated(params, message):
    with pytest.raises(ValidationError, match=message):
        GameTaskConfig(**params)


def test_config_is_frozen():
    with pytest.raises(ValidationError, match=r"eval_games\s+Instance is frozen"):
        GameTaskConfig().eval_games = 10


def test_a_mix_of_opponents_is_a_category_each_and_the_env_plays_the_tasks_opponent():
    from envs import make_env

    source = make_task_source("games", game="tictactoe", opponents=["self", "random"])
    assert source.categories == ["self", "random/seat0", "random/seat1"]
    rng = np.random.default_rng(0)
    self_play, versus = source.sample(rng, "self"), source.sample(rng, "random/seat1")
    assert self_play.metadata["opponent"] == "self" and versus.metadata == versus.metadata | {"opponent": "random",
                                                                                          "seat": 1}
    env = make_env("tictactoe", opponent="task")
    assert env.reset(self_play).role == "x"
    result = env.step("5")
    assert result.observation.role == "o"  # self-play: the other seat is the policy's too
    first = env.reset(versus)
    assert first.role == "o" and first.text.count("x") == 1  # the random opponent opened as x
    with pytest.raises(ValueError, match="opponent"):
        make_task_source("games", game="tictactoe", opponents=["grandmaster"])


def test_the_eval_games_of_a_mix_are_against_its_fixed_opponents_and_reset_in_the_task_opponent_env():
    from envs import make_env

    held_out = GameTasks(game="tictactoe", opponents=["self", "random"], eval_games=20).eval_tasks()
    assert Counter(t.category for t in held_out) == {"random/seat0": 10, "random/seat1": 10}  # self-play: no strength
    env = make_env("tictactoe", opponent="task")
    assert [env.reset(t).role for t in held_out] == ["x", "o"] * 10
    only_self = GameTasks(game="tictactoe", opponents=["self"], eval_games=20).eval_tasks()
    assert {t.metadata["opponent"] for t in only_self} == {"self"} and len({t.task_id for t in only_self}) == 20
    assert Counter(t.metadata["seat"] for t in only_self) == {0: 10, 1: 10}  # a fixed-opponent eval env plays both
    assert all(env.reset(t).role == "x" for t in only_self)  # self-play: the first mover's turn comes first
