import time

import numpy as np
import pytest

from envs import (
    ENVS,
    Action,
    CompositeReward,
    Env,
    EpisodeErrorCounter,
    EpisodeStateError,
    Observation,
    RewardTerm,
    SafeEnv,
    StepResult,
    Task,
    UnknownNameError,
    make_env,
)

TASK = Task(task_id="add/23+45", category="carries=0", prompt="23+45=", answer="68")


def test_arithmetic_episode_is_one_step():
    env = make_env("arithmetic")
    assert env.reset(TASK).text == "23+45="
    result = env.step(Action(text="68", token_ids=(12, 14, 2), finish_reason="stop"))
    assert (result.reward, result.done, result.observation) == (1.0, True, None)
    assert result.reward_parts == {"correctness": 1.0}
    assert result.info == {"finish_reason": "stop", "num_tokens": 3}
    assert result.error is None
    with pytest.raises(EpisodeStateError):
        env.step("68")  # the episode is over


def test_arithmetic_step_latency_waits_before_scoring_and_rejects_a_negative_one():
    env = make_env("arithmetic", step_latency_s=0.2)
    env.reset(TASK)
    started = time.monotonic()
    assert env.step("68").reward == 1.0
    assert time.monotonic() - started >= 0.2
    with pytest.raises(ValueError, match="step_latency_s must be >= 0"):
        make_env("arithmetic", step_latency_s=-1.0)


def test_arithmetic_env_with_a_composite_reward():
    reward = CompositeReward.from_weights({"correctness": 1.0, "format": 0.25})
    env = make_env("arithmetic", reward=reward)
    env.reset(TASK)
    result = env.step(Action(text="68", finish_reason="length"))
    assert result.reward == pytest.approx(1.0)
    assert result.reward_parts == {"correctness": 1.0, "format": 0.0}


def test_registry_miss_lists_valid_names():
    assert {"arithmetic", "chain_arithmetic", "first_digit"} <= set(ENVS.names())
    with pytest.raises(UnknownNameError, match="arithmetic, calculator, chain_arithmetic, first_digit"):
        make_env("arithmetc")


def _boom(task, completion, info):
    raise RuntimeError(f"reward crashed on {completion!r}")


def test_exception_in_reward_fails_the_episode_only():
    errors = EpisodeErrorCounter()
    env = SafeEnv(make_env("arithmetic", reward=CompositeReward([RewardTerm("boom", 1.0, _boom)])), errors)
    env.reset(TASK)
    result = env.step("68")
    assert result.done and result.reward == 0.0
    assert result.error == "RuntimeError: reward crashed on '68'"
    assert errors.snapshot() == {"arithmetic/RuntimeError": 1}
    # The next episode of a healthy env sharing the counter is unaffected.
    healthy = SafeEnv(make_env("arithmetic"), errors)
    healthy.reset(TASK)
    assert healthy.step("68").reward == 1.0
    assert errors.total == 1


def test_exception_in_reset_is_counted():
    errors = EpisodeErrorCounter()
    env = SafeEnv(make_env("arithmetic"), errors)
    observation = env.reset(None)  # type: ignore[arg-type]  # an env bug: task.prompt on None
    assert observation.error is not None and "AttributeError" in observation.error
    assert env.step("1").error.startswith("EpisodeStateError")  # reset never completed
    assert errors.snapshot() == {"arithmetic/AttributeError": 1, "arithmetic/EpisodeStateError": 1}


class Answers(Env):
    """Resets to `first` and answers every step with `result` (what a buggy user env might return)."""

    name = "answers"

    def __init__(self, result: object, first: object = None) -> None:
        self.result, self.first = result, first

    def reset(self, task: Task) -> Observation:
        return self.first if self.first is not None else Observation(text=task.prompt)

    def step(self, action):
        return self.result


def _done(reward=1.0, **fields) -> StepResult:
    return StepResult(observation=None, reward=reward, done=True, **fields)


@pytest.mark.parametrize("result, named", [
    (_done(float("nan")), "reward is nan: it must be a finite number"),
    (_done(float("-inf")), "reward is -inf"),
    (_done("1.0"), "reward is '1.0'"),
    (_done(None), "reward is None"),
    (_done(reward_parts={"format": "x"}), "reward_parts['format'] is 'x'"),
    (_done(reward_parts={"format": np.float32("nan")}), "reward_parts['format'] is np.float32(nan)"),
    (_done(reward_parts={3: 1.0}), "reward_parts has the key 3: names must be strings"),
    (_done(reward_parts=[1.0]), "reward_parts is a list, not a dict"),
    (_done(role_rewards={"o": float("inf")}), "role_rewards['o'] is inf"),
    (_done(metrics={"accuracy": None}), "metrics['accuracy'] is None"),
    (StepResult(observation="next question", reward=0.0, done=False), "step returned str, not an Observation"),
    ((1.0, True), "step returned tuple, not a StepResult"),
])
def test_a_step_result_the_worker_cannot_train_on_fails_the_episode_naming_the_value(result, named):
    errors = EpisodeErrorCounter()
    env = SafeEnv(Answers(result), errors)
    env.reset(TASK)
    failed = env.step("68")
    assert failed.done and failed.reward == 0.0 and failed.observation is None
    assert failed.error.startswith("InvalidStepResult: ") and named in failed.error
    assert errors.snapshot() == {"answers/InvalidStepResult": 1}


def test_numbers_of_any_real_type_pass():
    parts = {"a": np.float32(0.5), "b": np.int64(1), "c": True}
    result = _done(np.float64(0.25), reward_parts=parts, role_rewards={"o": -1}, metrics={"accuracy": 1})
    assert SafeEnv(Answers(result), EpisodeErrorCounter()).step("68") is result


def test_a_reset_that_returns_no_observation_fails_the_episode():
    errors = EpisodeErrorCounter()
    observation = SafeEnv(Answers(_done(), first="23+45="), errors).reset(TASK)
    assert observation.error == "InvalidStepResult: reset returned str, not an Observation"
    assert errors.snapshot() == {"answers/InvalidStepResult": 1}


def test_chain_env_is_multi_turn():
    env = make_env("chain_arithmetic", turns=3, max_addend=9)
    assert env.reset(TASK).text == "23+45="
    first = env.step("68")
    assert not first.done and first.reward == pytest.approx(1 / 3)
    addend = int(first.observation.text[1:-1])
    assert first.observation.text == f"+{addend}=" and 1 <= addend <= 9
    second = env.step("0")  # wrong: the running total is 68 + addend
    assert not second.done and second.reward == 0.0
    third = env.step(str(68 + addend + int(second.observation.text[1:-1])))
    assert third.done and third.observation is None and third.reward == pytest.approx(1 / 3)
    # Same task, same addends: every sample of a GRPO group sees the same episode.
    env.reset(TASK)
    assert env.step("68").observation == first.observation


def test_first_digit_rewards_the_first_character():
    env = make_env("first_digit", targets="12")
    task = Task(task_id="add/40+40", category="carries=0", prompt="40+40=", answer="80")
    env.reset(task)
    assert env.step("17").reward == 1.0
    env.reset(task)
    assert env.step("80").reward == 0.0
    env.reset(task)
    assert env.step("").reward == 0.0


def test_single_turn_reward_is_exact_correctness():
    """23+45: the leading integer must be 68 (leading whitespace allowed); a wrong or missing one scores 0."""
    env = make_env("arithmetic")
    rewards = []
    for completion in ["68", "67", " 68", ""]:
        env.reset(TASK)
        rewards.append(env.step(completion).reward)
    assert rewards == [1.0, 0.0, 1.0, 0.0]
