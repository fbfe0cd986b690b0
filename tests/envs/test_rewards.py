import math

import pytest

from envs import CompositeReward, EnvError, RewardTerm, Task, UnknownNameError, make_reward
from envs.rewards import answer_format, correctness

TASK = Task(task_id="add/23+45", category="carries=0", prompt="23+45=", answer="68")


@pytest.mark.parametrize(
    ("completion", "expected"), [("68", 1.0), (" 68", 1.0), ("68\n", 1.0), ("68 1", 1.0), ("68.", 1.0), ("67", 0.0),
                                 ("680", 0.0), ("", 0.0), ("x68", 0.0)]
)
def test_correctness_reads_the_leading_integer(completion, expected):
    assert correctness(TASK, completion, {}) == expected


@pytest.mark.parametrize("completion", ["68.9", "68/4", "68,000", "68e5", "68E5"])
def test_correctness_wants_the_integer_to_end_where_the_number_does(completion):
    assert correctness(TASK, completion, {}) == 0.0


def test_correctness_refuses_a_non_integer_answer_by_name():
    task = Task(task_id="gsm/7", category="all", prompt="?", answer="0.75")
    with pytest.raises(EnvError, match="'gsm/7' has the answer '0.75', not an integer; use the math_answer reward"):
        correctness(task, "0.75", {})


def test_correctness_handles_negative_answers():
    task = Task(task_id="t", category="c", prompt="3-5=", answer="-2")
    assert correctness(task, "-2", {}) == 1.0
    assert correctness(task, "2", {}) == 0.0


@pytest.mark.parametrize(
    ("completion", "finish_reason", "expected"),
    [("68", "stop", 1.0), ("-3", "stop", 1.0), ("68", "length", 0.0), ("68 ", "stop", 0.0), ("6+8", "stop", 0.0), ("", "stop", 0.0)],
)
def test_format_wants_a_bare_integer_that_stopped(completion, finish_reason, expected):
    assert answer_format(TASK, completion, {"finish_reason": finish_reason}) == expected


@pytest.mark.parametrize(("length", "expected"), [(3, 0.0), (6, 0.0), (7, -0.25), (8, -0.5), (10, -1.0), (11, -1.0)])
def test_overlong_matches_dapo_formula(length, expected):
    # L_max = 10, L_cache = 4: free up to 6 tokens, linear to -1 at 10, -1 beyond.
    overlong = make_reward("overlong", max_len=10, cache_len=4)
    assert overlong(TASK, "x", {"num_tokens": length}) == pytest.approx(expected)


def test_overlong_falls_back_to_text_length_and_validates():
    overlong = make_reward("overlong", max_len=4, cache_len=2)
    assert overlong(TASK, "123", {}) == pytest.approx(-0.5)  # (2 - 3) / 2
    with pytest.raises(EnvError, match="cache_len=5"):
        make_reward("overlong", max_len=4, cache_len=5)


def test_composite_weights_the_parts():
    reward = CompositeReward.from_weights(
        {"correctness": 1.0, "format": 0.5, "overlong": 2.0}, params={"overlong": {"max_len": 4, "cache_len": 2}}
    )
    total, parts = reward(TASK, "68", {"finish_reason": "stop", "num_tokens": 3})
    assert parts == {"correctness": 1.0, "format": 1.0, "overlong": -0.5}
    assert total == pytest.approx(1.0 + 0.5 - 1.0)
    total, parts = reward(TASK, "61", {"finish_reason": "length", "num_tokens": 2})
    assert parts == {"correctness": 0.0, "format": 0.0, "overlong": 0.0}
    assert total == 0.0


def test_composite_rejects_bad_terms():
    with pytest.raises(UnknownNameError, match="correctness"):  # the miss lists the valid names
        CompositeReward.from_weights({"corectness": 1.0})
    with pytest.raises(EnvError, match="format"):
        CompositeReward.from_weights({"correctness": 1.0}, params={"format": {}})
    with pytest.raises(EnvError, match="takes no parameters"):
        make_reward("correctness", scale=2)
    with pytest.raises(EnvError, match="non-finite weight"):
        CompositeReward([RewardTerm("c", math.nan, correctness)])


def test_composite_rejects_non_finite_reward_values():
    reward = CompositeReward([RewardTerm("nan", 1.0, lambda task, completion, info: math.nan)])
    with pytest.raises(EnvError, match="'nan' returned non-finite"):
        reward(TASK, "68", {})
