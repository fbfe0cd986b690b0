"""The calculator's safe parser (hand-computed values, hostile inputs rejected fast) and the
calculator tool env (call syntax, grading, the calls limit, SPEAR's decaying tool bonus)."""

import math
import time
from fractions import Fraction

import pytest
from pydantic import ValidationError

from envs import Action, EpisodeStateError, Task, make_env
from envs.calculator import (
    CalculatorEnv,
    CalculatorError,
    ToolBonusConfig,
    evaluate_expression,
    format_result,
    tool_bonus_coefficient,
)
from envs.errors import EnvError

TASK = Task(task_id="add/347+589", category="carries=2", prompt="347+589=", answer="936")


@pytest.mark.parametrize(("text", "value"), [
    ("347+589", 936),
    ("2+3*4", 14),  # * binds tighter than +
    ("2*3+4", 10),
    ("8-3-2", 3),  # left-associative: (8-3)-2, not 8-(3-2)
    ("64/4/2", 8),
    ("(2+3)*4", 20),
    ("2*(3+(4-1))/3", 4),
    ("-5", -5),
    ("-3*-2", 6),
    ("--5", 5),
    ("-(1-3)", 2),
    ("2--3", 5),
    (" 1 +\t2 ", 3),
    ("1.5*2", 3),
    ("0.1+0.2", Fraction(3, 10)),  # exact, not 0.30000000000000004
    ("7/2", Fraction(7, 2)),
    ("1/3", Fraction(1, 3)),
    ("1/3*3", 1),
    ("007", 7),
    ("(" * 16 + "1" + ")" * 16, 1),  # exactly the nesting limit
    ("9" * 30, 10**30 - 1),  # exactly the digits limit
])
def test_evaluates_hand_computed_values(text, value):
    assert evaluate_expression(text) == value


@pytest.mark.parametrize(("value", "text"), [
    (Fraction(936), "936"),
    (Fraction(-12), "-12"),
    (Fraction(0), "0"),
    (Fraction(1, 3), "0.333333"),
    (Fraction(2, 3), "0.666667"),
    (Fraction(-1, 3), "-0.333333"),
    (Fraction(5, 2), "2.5"),
    (Fraction(1, 8), "0.125"),
    (Fraction(1, 2_000_000), "0.000001"),  # half rounds away from zero
    (Fraction(-4, 10_000_000), "0"),  # rounds to zero: no "-0"
])
def test_format_result(value, text):
    assert format_result(value) == text


HOSTILE = [
    ("9" * 50, "number too large (50 digits > 30)"),
    ("99999999999999999999*99999999999999999999*99999999999999999999", "number too large (beyond 1e+30)"),
    ("1" + "0" * 29 + "*10+1", "number too large"),  # 1e29 * 10 = 1e30 is allowed, 1e30 + 1 is not
    ("(" * 10000 + "1" + ")" * 10000, "expression too long (20001 > 200 characters)"),
    ("(" * 17 + "1" + ")" * 17, "nesting deeper than 16"),
    ("1+" * 150 + "1", "expression too long (301 > 200 characters)"),
    ("1" * 10**6, "expression too long (1000000 > 200 characters)"),
    ("1/0", "division by zero"),
    ("1/(2-2)", "division by zero"),
    ("1/0.0", "division by zero"),
    ("３+1", "unexpected character '３' at 0"),  # fullwidth digit
    ("١", "unexpected character '١' at 0"),  # Arabic-Indic digit
    ("2²", "unexpected character '²' at 1"),
    ("5−2", "unexpected character '−' at 1"),  # U+2212 minus sign
    ("1\u200b+2", "unexpected character '\\u200b' at 1"),  # zero-width space
    ("1\u00a0+2", "unexpected character '\\xa0' at 1"),  # non-breaking space
    ("", "empty expression"),
    ("   ", "empty expression"),
    ("+", "unexpected character '+' at 0"),
    ("*", "unexpected character '*' at 0"),
    ("-", "unexpected end"),
    ("1+", "unexpected end"),
    ("(1+2", "unexpected end"),
    ("()", "unexpected character ')' at 1"),
    ("1+2)", "unexpected character ')' at 3"),
    ("1 2", "unexpected character '2' at 2"),
    ("12+3abc", "unexpected character 'a' at 4"),
    ("1.", "unexpected character '.' at 1"),
    (".5", "unexpected character '.' at 0"),
    ("1e5", "unexpected character 'e' at 1"),
    ("2**3", "unexpected character '*' at 2"),
    ("__import__('os')", "unexpected character '_' at 0"),
]


@pytest.mark.parametrize(("text", "message"), HOSTILE)
def test_hostile_input_is_rejected_fast(text, message):
    start = time.perf_counter()
    with pytest.raises(CalculatorError) as excinfo:
        evaluate_expression(text)
    elapsed = time.perf_counter() - start
    assert message in str(excinfo.value)
    assert isinstance(excinfo.value, EnvError)
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms for {text[:20]!r}"


def test_a_long_chain_of_unary_minus_does_not_recurse():
    assert evaluate_expression("-" * 199 + "1") == -1


def episode(env: CalculatorEnv, *turns: str | Action):
    env.reset(TASK)
    return [env.step(turn) for turn in turns]


def test_a_correct_tool_episode():
    env = make_env("calculator", tool_bonus={"c0": 0.2, "k": 1, "steps": 200})
    assert env.reset(TASK).text.endswith("\n347+589=")
    call, final = episode(env, "Let me add. <calc>347 + 589</calc>", Action(text="936", policy_version=0))
    assert call.observation.text == "<result>936</result>"
    assert (call.done, call.reward, call.reward_parts) == (False, 0.0, {})
    assert final.done and final.observation is None
    assert final.reward == pytest.approx(1.2)
    assert final.reward_parts == pytest.approx({"correctness": 1.0, "tool_bonus": 0.2})
    assert final.metrics == {"accuracy": 1.0, "tool_call_rate": 1.0, "tool_calls": 1.0}


def test_a_direct_answer_without_a_call():
    env = CalculatorEnv(instructions="")
    assert env.reset(TASK).text == "347+589="
    (result,) = [env.step(" 936.0 is the sum")]
    assert result.done
    assert result.reward_parts == {"correctness": 1.0, "tool_bonus": 0.0}
    assert result.metrics == {"accuracy": 1.0, "tool_call_rate": 0.0, "tool_calls": 0.0}


@pytest.mark.parametrize("answer", ["The answer is 936", "347 + 589 = 936.", "-1 + 937 = 936"])
def test_the_last_number_is_the_answer(answer):
    env = CalculatorEnv(tool_bonus={"c0": 0.0})
    (final,) = episode(env, answer)
    assert final.reward_parts == {"correctness": 1.0, "tool_bonus": 0.0}


@pytest.mark.parametrize("answer", ["935", "", "9 3 6", "936/2", "1,936", "936 or 935", "936.5", "936e1"])
def test_a_wrong_answer_earns_only_the_bonus(answer):
    env = CalculatorEnv(tool_bonus={"c0": 0.5})
    _, final = episode(env, "<calc>347+589</calc>", answer)
    assert final.reward_parts == {"correctness": 0.0, "tool_bonus": 0.5}
    assert final.metrics["accuracy"] == 0.0


def test_a_malformed_call_is_an_error_observation_and_the_episode_continues():
    env = CalculatorEnv(tool_bonus={"c0": 0.5})
    results = episode(env, "<calc>347+589", "<calc>1/0</calc>", "936")
    assert results[0].observation.text == "<result>error: missing </calc></result>"
    assert results[1].observation.text == "<result>error: division by zero</result>"
    assert not results[0].done and not results[1].done
    # Calls without a value earn no bonus.
    assert results[2].reward_parts == {"correctness": 1.0, "tool_bonus": 0.0}
    assert results[2].metrics == {"accuracy": 1.0, "tool_call_rate": 0.0, "tool_calls": 0.0}


def test_only_the_first_call_span_is_used():
    env = CalculatorEnv()
    (call,) = episode(env, "<calc>2*3</calc> and <calc>4*5</calc>")
    assert call.observation.text == "<result>6</result>"


def test_the_calls_limit_ends_the_episode_after_one_more_turn():
    env = CalculatorEnv(max_calls=2, tool_bonus={"c0": 0.4, "k": 2})
    results = episode(env, "<calc>300+47</calc>", "<calc>347+589</calc>", "<calc>1+1</calc>", "<calc>936</calc>")
    texts = [r.observation.text for r in results[:3]]
    assert texts == ["<result>347</result>", "<result>936</result>", "<result>error: no calls left</result>"]
    final = results[3]
    assert final.done  # graded although it is a call: its only number is the call's expression
    assert final.reward_parts == pytest.approx({"correctness": 0.0, "tool_bonus": 0.4})
    assert final.metrics == {"accuracy": 0.0, "tool_call_rate": 1.0, "tool_calls": 2.0}
    with pytest.raises(EpisodeStateError):
        env.step("936")
    *_, final = episode(env, "<calc>1</calc>", "<calc>2</calc>", "<calc>3</calc>", "So 936 <calc>936+1")
    assert final.reward_parts["correctness"] == 1.0  # the number outside the unclosed call


def test_bonus_uses_the_final_turns_policy_version_and_caps_at_k():
    env = CalculatorEnv(max_calls=3, tool_bonus=ToolBonusConfig(c0=0.3, k=2, steps=100))
    *_, final = episode(env, "<calc>1</calc>", "<calc>2</calc>", "<calc>3</calc>",
                        Action(text="936", policy_version=50))
    # c(50) = 0.3 * (1 - 50/100) = 0.15; min(3, 2) / 2 = 1
    assert final.reward_parts["tool_bonus"] == pytest.approx(0.15)
    assert final.reward == pytest.approx(1.15)
    *_, final = episode(env, "<calc>1</calc>", Action(text="936", policy_version=0))
    assert final.reward_parts["tool_bonus"] == pytest.approx(0.15)  # 0.3 * min(1, 2) / 2


def test_step_before_reset_raises():
    with pytest.raises(EpisodeStateError):
        CalculatorEnv().step("936")


def test_a_task_with_a_non_numeric_answer_is_an_env_error():
    env = CalculatorEnv()
    env.reset(Task(task_id="t/1", category="all", prompt="?", answer="seven"))
    with pytest.raises(EnvError, match="'t/1' has a non-numeric answer 'seven'"):
        env.step("7")


@pytest.mark.parametrize(("schedule", "expected"), [
    # T = 200, c0 = 0.2: t = 0, 50, 100 (T/2), 200 (T), 1000 (beyond), -1 (no version: step 0)
    ("linear", [0.2, 0.15, 0.1, 0.0, 0.0, 0.2]),
    # cosine: 0.2 * (1 + cos(pi * t/T)) / 2; at t = 50: 0.1 * (1 + sqrt(2)/2) = 0.170711
    ("cosine", [0.2, 0.1 * (1 + math.sqrt(2) / 2), 0.1, 0.0, 0.0, 0.2]),
])
def test_bonus_schedule(schedule, expected):
    cfg = ToolBonusConfig(c0=0.2, steps=200, schedule=schedule)
    values = [tool_bonus_coefficient(t, cfg) for t in (0, 50, 100, 200, 1000, -1)]
    assert values == pytest.approx(expected, abs=1e-12)


def test_bonus_off_and_config_validation():
    assert tool_bonus_coefficient(0, ToolBonusConfig(c0=0.0)) == 0.0
    with pytest.raises(ValidationError, match="k"):
        CalculatorEnv(tool_bonus={"k": 0})
    with pytest.raises(ValidationError, match="extra"):
        CalculatorEnv(tool_bonus={"decay": "linear"})
    with pytest.raises(ValidationError, match="schedule"):
        ToolBonusConfig(schedule="exponential")
    with pytest.raises(EnvError, match="max_calls >= 1, got 0"):
        CalculatorEnv(max_calls=0)
    cfg = ToolBonusConfig()
    assert (cfg.c0, cfg.k, cfg.steps, cfg.schedule) == (0.2, 1, 200, "linear")
