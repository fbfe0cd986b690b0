"""The episode loop against a scripted engine: returns, masks, versions, shared first turns,
limits, hung and failing envs. (tests/integration/test_episodes.py runs it on real vLLM.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from actors.episode import EpisodeLimits
from actors.episode_loop import EpisodeLoop
from actors.rendering import PlainRenderer
from buffer.schema import NO_VERSION
from envs import (Action, Env, EpisodeErrorCounter, Observation, SafeEnv, StepResult, Task, make_env,
                  register_env)
from tests.actors.conftest import EOS, ScriptedEngine
from tests.actors.episode_runs import SAMPLING, run_groups

TASK = Task(task_id="add/23+45", category="carries=0", prompt="23+45=", answer="68")


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _loop(engine, tokenizer, errors=None, **limits) -> EpisodeLoop:
    return EpisodeLoop(engine, PlainRenderer(tokenizer), EpisodeLimits(**limits), errors or EpisodeErrorCounter())


def _safe(name: str, errors: EpisodeErrorCounter, **params) -> Env:
    return SafeEnv(make_env(name, **params), errors)


def test_single_turn_group_is_one_request_of_n_samples(char_tokenizer):
    answers = ["68", "67", "68", "1"]
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, answers[i]))
    errors = EpisodeErrorCounter()
    [group] = run_groups(_loop(engine, char_tokenizer, errors),
                         [(TASK, [_safe("arithmetic", errors) for _ in answers])])
    assert [(n, prompt) for _, prompt, _, n in engine.requests] == [(4, char_tokenizer("23+45=")["input_ids"])]
    trajectories = [t for e in group.episodes for t in e.trajectories()]
    assert [t.reward for t in trajectories] == [1.0, 0.0, 1.0, 0.0]
    first = trajectories[0]
    assert list(first.completion_ids) == _encode(char_tokenizer, "68") + [EOS]
    assert list(first.loss_mask) == [1, 1, 1] and list(first.policy_versions) == [0, 0, 0]
    assert first.finish_reason == "stop" and first.num_turns == 1
    assert first.step_rewards == [1.0] and first.reward_parts == {"correctness": 1.0}
    assert [e.metrics for e in group.episodes][:2] == [{"accuracy": 1.0}, {"accuracy": 0.0}]


def test_multi_turn_return_is_the_sum_of_step_rewards_and_env_tokens_are_masked(char_tokenizer):
    env = make_env("chain_arithmetic", turns=3, max_addend=9)
    first = env.reset(TASK)
    addends = []
    result = env.step("68")
    while not result.done:
        addends.append(int(result.observation.text[1:-1]))
        result = env.step("0")
    totals = [68, 68 + addends[0], 68 + sum(addends)]

    def reply(prompt, i):  # right on turns 1 and 3, wrong on turn 2
        turn = char_tokenizer.decode(prompt, skip_special_tokens=True).count("=")
        return _encode(char_tokenizer, "0" if turn == 2 else str(totals[turn - 1]))

    engine = ScriptedEngine(reply)
    errors = EpisodeErrorCounter()
    [group] = run_groups(_loop(engine, char_tokenizer, errors, max_turns=3),
                         [(TASK, [_safe("chain_arithmetic", errors, turns=3, max_addend=9)])])
    [trajectory] = group.episodes[0].trajectories()
    assert trajectory.step_rewards == pytest.approx([1 / 3, 0.0, 1 / 3])
    assert trajectory.reward == pytest.approx(2 / 3)  # not the last step's reward alone
    assert trajectory.num_turns == 3 and first.text == "23+45="
    # The context is the model's tokens and the env's, appended once each, never re-tokenized.
    pieces = [(str(totals[0]), 1), (f"+{addends[0]}=", 0), ("0", 1), (f"+{addends[1]}=", 0), (str(totals[2]), 1)]
    expected_ids, expected_mask = [], []
    for text, generated in pieces:
        ids = _encode(char_tokenizer, text) + ([EOS] if generated else [])
        expected_ids += ids
        expected_mask += [generated] * len(ids)
    assert list(trajectory.completion_ids) == expected_ids
    assert list(trajectory.loss_mask) == expected_mask
    mask = np.array(expected_mask, bool)
    assert (trajectory.policy_versions[~mask] == NO_VERSION).all() and (trajectory.policy_versions[mask] == 0).all()
    assert (trajectory.behavior_logprobs[~mask] == 0).all() and (trajectory.behavior_logprobs[mask] == -0.5).all()
    assert group.episodes[0].metrics == {"accuracy": 0.0}


def test_turn_limit_and_token_budget(char_tokenizer):
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "68"))
    errors = EpisodeErrorCounter()
    # Two turns allowed, the chain needs three.
    [group] = run_groups(_loop(engine, char_tokenizer, errors, max_turns=2),
                         [(TASK, [_safe("chain_arithmetic", errors, turns=3)])])
    assert group.episodes[0].finish_reason == "max_turns" and group.episodes[0].roles[""].num_turns == 2
    # A budget of 12 tokens: prompt 7 + answer 3 leave 2, too few for the next observation ("+c=").
    engine.requests.clear()
    [group] = run_groups(_loop(engine, char_tokenizer, errors, max_turns=5, max_tokens=12),
                         [(TASK, [_safe("chain_arithmetic", errors, turns=3)])])
    [trajectory] = group.episodes[0].trajectories()
    assert trajectory.finish_reason == "length"
    assert len(trajectory.prompt_ids) + len(trajectory.completion_ids) == 10  # the observation was not appended
    assert [(len(prompt), max_tokens) for _, prompt, max_tokens, _ in engine.requests] == [(7, 5)]


def test_a_first_observation_over_the_budget_fails_naming_the_settings(char_tokenizer):
    """A prompt that fills the budget is a setting to change, not an episode that ran long."""
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "68"))
    errors = EpisodeErrorCounter()
    [group] = run_groups(_loop(engine, char_tokenizer, errors, max_tokens=7),  # the prompt "23+45=" is 7 tokens
                         [(TASK, [_safe("arithmetic", errors) for _ in range(2)])])
    assert [e.finish_reason for e in group.episodes] == ["error", "error"] and engine.requests == []
    assert errors.snapshot() == {"arithmetic/PromptOverBudget": 2}
    assert group.episodes[0].error == ("the first observation is 7 tokens, which leaves no room to generate under "
                                       "the budget of 7 (rollout.limits.max_tokens, rollout.engine.max_model_len)")


def test_a_turn_cut_at_max_new_tokens_is_reported_as_length(char_tokenizer):
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "1234567890"))
    errors = EpisodeErrorCounter()
    [group] = run_groups(_loop(engine, char_tokenizer, errors), [(TASK, [_safe("arithmetic", errors)])])
    [trajectory] = group.episodes[0].trajectories()
    assert trajectory.finish_reason == "length" and len(trajectory.completion_ids) == SAMPLING.max_new_tokens


@register_env("test_hangs_on_odd_tasks")
class HangsOnOddTasks(Env):
    """Hangs (until released) in step when the task id ends with an odd digit."""

    release = threading.Event()

    def reset(self, task: Task) -> Observation:
        self.task = task
        return Observation(text=task.prompt)

    def step(self, action: Action | str) -> StepResult:
        if int(self.task.task_id[-1]) % 2:
            self.release.wait(30)
        return StepResult(None, 1.0, True)


@register_env("test_records_threads")
class RecordsThreads(Env):
    """Arithmetic-like, noting the thread of every call."""

    threads: list[str] = []

    def reset(self, task: Task) -> Observation:
        self.threads.append(threading.current_thread().name)
        return Observation(text=task.prompt)

    def step(self, action: Action | str) -> StepResult:
        self.threads.append(threading.current_thread().name)
        return StepResult(observation=None, reward=1.0, done=True)


@pytest.mark.parametrize("inline", [False, True])
def test_inline_groups_call_their_envs_on_the_loops_thread(char_tokenizer, inline):
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "68"))
    errors = EpisodeErrorCounter()
    RecordsThreads.threads = []
    groups = run_groups(_loop(engine, char_tokenizer, errors),
                        [(TASK, [SafeEnv(RecordsThreads(), errors) for _ in range(3)]) for _ in range(2)],
                        inline=inline)
    assert [e.finish_reason for g in groups for e in g.episodes] == ["stop"] * 6
    assert [t.reward for g in groups for e in g.episodes for t in e.trajectories()] == [1.0] * 6
    assert len(RecordsThreads.threads) == 12  # a reset and a step per episode
    on_loop = [name == threading.current_thread().name for name in RecordsThreads.threads]
    assert all(on_loop) if inline else not any(on_loop)
    assert [n for _, _, _, n in engine.requests] == [3, 3]  # still one request of n per group


def test_a_groups_shared_first_observation_is_tokenized_once(char_tokenizer):
    class CountingRenderer(PlainRenderer):
        firsts = 0

        def first(self, observation):
            CountingRenderer.firsts += 1
            return super().first(observation)

    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "68"))
    errors = EpisodeErrorCounter()
    loop = EpisodeLoop(engine, CountingRenderer(char_tokenizer), EpisodeLimits(), errors)
    other = Task(task_id="add/1+2", category="carries=0", prompt="1+2=", answer="3")
    groups = run_groups(loop, [(TASK, [_safe("arithmetic", errors) for _ in range(4)]),
                              (other, [_safe("arithmetic", errors) for _ in range(4)])], inline=True)
    assert CountingRenderer.firsts == 2  # one per group, not one per episode
    prompts = [e.roles[""].prompt_ids for g in groups for e in g.episodes]
    assert prompts[0] == char_tokenizer("23+45=")["input_ids"] and prompts[4] == char_tokenizer("1+2=")["input_ids"]
    assert prompts[0] is not prompts[1]  # every context owns its tokens


def test_an_inline_env_that_raises_ends_only_its_episode(char_tokenizer):
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "68"))
    errors = EpisodeErrorCounter()
    [group] = run_groups(_loop(engine, char_tokenizer, errors), [(TASK, [Raises(), _safe("arithmetic", errors)])],
                         inline=True)  # not wrapped in SafeEnv: the exception reaches the loop itself
    assert [e.finish_reason for e in group.episodes] == ["error", "stop"]
    assert "KeyError: 'tool state lost'" in group.episodes[0].error
    assert errors.snapshot() == {"test_raises/KeyError": 1}


@register_env("test_raises")
class Raises(Env):
    def reset(self, task: Task) -> Observation:
        return Observation(text=task.prompt)

    def step(self, action: Action | str) -> StepResult:
        raise KeyError("tool state lost")


def test_a_hung_env_ends_only_its_episode_and_does_not_stall_the_others(char_tokenizer):
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "7"))
    errors = EpisodeErrorCounter()
    loop = _loop(engine, char_tokenizer, errors, step_timeout_s=0.5)
    tasks = [Task(task_id=f"t{i}", category="c", prompt="1+1=", answer="2") for i in range(4)]
    started = time.monotonic()
    done = []
    for i, task in enumerate(tasks):
        loop.start(f"g{i}", task, [SafeEnv(HangsOnOddTasks(), errors) for _ in range(2)], SAMPLING, done.append)
    finished_at = {}
    while not loop.idle:
        loop.pump(wait_s=0.01)
        for group in done:
            finished_at.setdefault(group.key, time.monotonic() - started)
        assert time.monotonic() - started < 5
    HangsOnOddTasks.release.set()
    reasons = {g.key: [e.finish_reason for e in g.episodes] for g in done}
    assert reasons == {"g0": ["stop", "stop"], "g1": ["timeout", "timeout"], "g2": ["stop", "stop"],
                       "g3": ["timeout", "timeout"]}
    assert finished_at["g0"] < 0.4 and finished_at["g2"] < 0.4  # not held up by the hung ones
    assert errors.snapshot() == {"test_hangs_on_odd_tasks/EnvCallTimeout": 4}
    assert loop.calls.lost_threads == 4


@register_env("test_hangs_in_reset")
class HangsInReset(Env):
    release = threading.Event()

    def reset(self, task: Task) -> Observation:
        self.release.wait(30)
        return Observation(text=task.prompt)

    def step(self, action: Action | str) -> StepResult:
        return StepResult(None, 1.0, True)


def test_a_hung_reset_ends_only_its_episode_and_a_group_whose_resets_all_failed_ends(char_tokenizer):
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "68"))
    errors = EpisodeErrorCounter()
    loop = _loop(engine, char_tokenizer, errors, step_timeout_s=0.3)
    try:
        groups = run_groups(loop, [(TASK, [SafeEnv(HangsInReset(), errors), _safe("arithmetic", errors),
                                           _safe("arithmetic", errors)]),
                                   (TASK, [SafeEnv(HangsInReset(), errors), SafeEnv(HangsInReset(), errors)])])
    finally:
        HangsInReset.release.set()
    reasons = {g.key: [e.finish_reason for e in g.episodes] for g in groups}
    assert reasons == {"g0": ["timeout", "stop", "stop"], "g1": ["timeout", "timeout"]}
    assert [n for _, _, _, n in engine.requests] == [2]  # the others still share their first turn
    assert errors.snapshot() == {"test_hangs_in_reset/EnvCallTimeout": 3}


class NoBosRenderer(PlainRenderer):
    """As with a tokenizer that adds no BOS (GPT-2's, Qwen's base models')."""

    def first(self, observation: Observation) -> list[int]:
        return self.next(observation, None)


class RefusesNines(ScriptedEngine):
    """Refuses requests whose prompt has a 9, as vLLM and TransformersEngine refuse requests they cannot take."""

    def __init__(self, tokenizer, reply) -> None:
        super().__init__(reply)
        self.nine = _encode(tokenizer, "9")[0]

    def add(self, request_id, prompt_ids, *args) -> None:
        if self.nine in prompt_ids:
            raise ValueError("prompt refused")
        super().add(request_id, prompt_ids, *args)


def test_a_request_the_engine_refuses_and_an_empty_prompt_fail_only_their_episodes(char_tokenizer):
    engine = RefusesNines(char_tokenizer, lambda prompt, i: _encode(char_tokenizer, "68"))
    errors = EpisodeErrorCounter()
    loop = EpisodeLoop(engine, NoBosRenderer(char_tokenizer), EpisodeLimits(), errors)
    refused, empty = Task("add/9+1", "carries=0", "9+1=", "10"), Task("empty", "c", "", "")
    groups = run_groups(loop, [(task, [_safe("arithmetic", errors), _safe("arithmetic", errors)])
                               for task in (TASK, refused, empty)])
    outcomes = {g.key: {(e.finish_reason, e.error) for e in g.episodes} for g in groups}
    assert outcomes == {"g0": {("stop", None)}, "g1": {("error", "ValueError: prompt refused")},
                        "g2": {("error", "empty prompt: the observation rendered to no tokens")}}
    assert loop.engine_drained and not loop._requests  # nothing left of the refused request


def test_an_env_that_raises_ends_its_episode_as_error_and_is_counted_by_type(char_tokenizer):
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "7"))
    errors = EpisodeErrorCounter()
    [group] = run_groups(_loop(engine, char_tokenizer, errors),
                         [(TASK, [SafeEnv(Raises(), errors), _safe("arithmetic", errors)])])
    assert [e.finish_reason for e in group.episodes] == ["error", "stop"]
    assert "KeyError" in group.episodes[0].error
    assert errors.snapshot() == {"test_raises/KeyError": 1}


@register_env("test_nan_reward")
class NanReward(Env):
    def reset(self, task: Task) -> Observation:
        return Observation(text=task.prompt)

    def step(self, action: Action | str) -> StepResult:
        return StepResult(observation=None, reward=float("nan"), done=True)


def test_an_env_that_answers_a_nan_reward_ends_its_episode_and_the_group_still_trains(char_tokenizer):
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "68"))
    errors = EpisodeErrorCounter()
    [group] = run_groups(_loop(engine, char_tokenizer, errors),
                         [(TASK, [SafeEnv(NanReward(), errors)] + [_safe("arithmetic", errors) for _ in range(2)])])
    assert [e.finish_reason for e in group.episodes] == ["error", "stop", "stop"]
    assert group.episodes[0].error == "InvalidStepResult: reward is nan: it must be a finite number"
    assert errors.snapshot() == {"test_nan_reward/InvalidStepResult": 1}
    kept = [t for e in group.episodes if not e.failed for t in e.trajectories()]  # what the worker inserts
    assert [t.reward for t in kept] == [1.0, 1.0]


def test_weights_swapped_between_steps_are_recorded_per_token(char_tokenizer):
    engine = ScriptedEngine(lambda prompt, i: _encode(char_tokenizer, "68"), steps_to_finish=3)
    errors = EpisodeErrorCounter()
    loop = _loop(engine, char_tokenizer, errors)
    done = []
    loop.start("g0", TASK, [_safe("arithmetic", errors)], SAMPLING, done.append)
    while not engine.requests:
        loop.pump(wait_s=0.01)
    loop.hold()  # a weight swap without mixing: nothing new reaches the engine ...
    loop.start("g1", TASK, [_safe("arithmetic", errors)], SAMPLING, done.append)
    while not (loop.engine_drained and done):
        loop.pump(wait_s=0.01)
    assert [g.key for g in done] == ["g0"] and len(engine.requests) == 1
    engine.load_weights([], version=3)  # ... until the engine has drained
    loop.release()
    while not loop.idle:
        loop.pump(wait_s=0.01)
    assert [list(g.episodes[0].trajectories()[0].policy_versions) for g in done] == [[0, 0, 0], [3, 3, 3]]
