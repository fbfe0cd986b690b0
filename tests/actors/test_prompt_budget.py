"""Prompts that never fit the token budget stop the run at once, with the setting to change, instead
of the learner waiting out its sample timeout for groups that never come. A few long prompts in a
dataset do not stop it. Runs groups through the episode loop with a scripted engine; the worker
and the pool are built without an engine or Ray (the parts that decide need neither)."""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading

import pytest

from actors.episode import EpisodeLimits
from actors.episode_loop import EpisodeLoop
from actors.rendering import PlainRenderer
from actors.rollout_worker import PROMPT_CHECK_GROUPS, PromptBudgetWatch, PromptsOverBudget, RolloutWorker
from cluster.errors import RunFailed
from cluster.scaling import RestartBudget
from cluster.worker_pool import Worker, WorkerPool
from envs import EpisodeErrorCounter, SafeEnv, Task, make_env
from tests.actors.conftest import ScriptedEngine
from tests.actors.episode_runs import run_groups

SHORT = Task(task_id="add/2+3", category="carries=0", prompt="2+3=", answer="5")  # 5 tokens
LONG = Task(task_id="add/23+45", category="carries=0", prompt="23+45=", answer="68")  # 7 tokens
BUDGET = 7  # rollout.limits.max_tokens: LONG leaves no room to generate, SHORT does


def _groups(char_tokenizer, tasks: list[Task]) -> list:
    """The finished GroupRuns of `tasks`, two episodes each, in order."""
    engine = ScriptedEngine(lambda prompt, i: char_tokenizer("5", add_special_tokens=False)["input_ids"])
    errors = EpisodeErrorCounter()
    loop = EpisodeLoop(engine, PlainRenderer(char_tokenizer), EpisodeLimits(max_tokens=BUDGET), errors)
    done = run_groups(loop, [(task, [SafeEnv(make_env("arithmetic"), errors) for _ in range(2)]) for task in tasks])
    return sorted(done, key=lambda group: int(group.key[1:]))


def test_the_loop_counts_a_groups_episodes_over_the_budget(char_tokenizer):
    long, short = _groups(char_tokenizer, [LONG, SHORT])
    assert (long.over_budget, short.over_budget) == (2, 0)


def test_a_worker_whose_prompts_never_fit_stops_naming_the_setting(char_tokenizer):
    watch = PromptBudgetWatch("w0-abc")
    runs = _groups(char_tokenizer, [LONG] * PROMPT_CHECK_GROUPS)
    for run in runs[:-1]:
        watch.saw(run)
    with pytest.raises(PromptsOverBudget) as stopped:
        watch.saw(runs[-1])
    message = str(stopped.value)
    assert message.startswith(f"rollout worker w0-abc: {PROMPT_CHECK_GROUPS} of its tasks had prompts that left no "
                              "room to generate")
    assert "the first observation is 7 tokens" in message and "rollout.engine.max_model_len" in message


def test_a_few_long_prompts_do_not_stop_a_worker(char_tokenizer):
    """Once a prompt fitted, long ones are the dataset's, not the settings': they never stop the run."""
    watch = PromptBudgetWatch("w0")
    for run in _groups(char_tokenizer, [LONG, SHORT] + [LONG] * (PROMPT_CHECK_GROUPS + 1)):
        watch.saw(run)
    assert watch.fits


def _stopped_worker(failure: BaseException) -> RolloutWorker:
    worker = object.__new__(RolloutWorker)  # no engine, no Ray: only what _post and _shutdown touch
    worker.name, worker._failure = "w0", failure
    worker._jobs, worker._accepting, worker._post_lock = queue.Queue(), True, threading.Lock()
    worker._weight_waiters, worker._episode_jobs, worker._quota = [], [], None
    worker.loop = worker.replay = worker.weights = type("Closable", (), {"close": lambda self: None})()
    worker._stopped = threading.Event()
    return worker


def test_a_worker_stopped_over_budget_answers_every_caller_with_that_error():
    """Its type must reach the pool (run(), an evaluation's call, a sync-mode produce): a plain
    WorkerStopped would have the worker restarted, to stop again the same way."""
    failure = PromptsOverBudget("rollout worker w0: 8 of its tasks had prompts that left no room to generate")
    worker = _stopped_worker(failure)
    quota = cf.Future()
    worker._quota = (4, quota)
    worker._shutdown()
    assert quota.exception(timeout=0) is failure
    with pytest.raises(PromptsOverBudget):
        worker._post(("weights", None))
    with pytest.raises(PromptsOverBudget):
        worker.run()  # async mode's call, which the pool watches


def test_the_pool_stops_the_run_instead_of_restarting_a_worker_over_budget():
    started = []
    pool = WorkerPool(lambda slot, name: started.append(name), admission=None, produce_continuously=True,
                      budget=RestartBudget(3, 60.0))
    worker = Worker(0, "w0-abc", handle=None, ready_ref=None, ready=True)
    pool.workers = [worker]
    failure = PromptsOverBudget("rollout worker w0-abc: 8 of its tasks had prompts that left no room to generate")
    with pytest.raises(RunFailed, match="w0-abc: 8 of its tasks had prompts that left no room"):
        pool.replace_dead(worker, failure)
    assert started == [] and pool.restarts == 0
