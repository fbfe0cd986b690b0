"""Prompts that never fit the token budget stop the run at once, with the setting to change, instead
of the learner waiting out its sample timeout for groups that never come. A few long prompts in a
dataset do not stop it. Runs groups through the episode loop with a scripted engine; the worker
and the pool are built without an engine or Ray (the parts that decide need neither)."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import threading
import time

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
from tests.actors.episode_runs import SAMPLING, run_groups

SHORT = Task(task_id="add/2+3", category="carries=0", prompt="2+3=", answer="5")  # 5 tokens
LONG = Task(task_id="add/23+45", category="carries=0", prompt="23+45=", answer="68")  # 7 tokens
BUDGET = 7  # rollout.limits.max_tokens: LONG leaves no room to generate, SHORT does


def _loop(char_tokenizer, steps_to_finish: int = 1) -> EpisodeLoop:
    engine = ScriptedEngine(lambda prompt, i: char_tokenizer("5", add_special_tokens=False)["input_ids"],
                            steps_to_finish=steps_to_finish)
    return EpisodeLoop(engine, PlainRenderer(char_tokenizer), EpisodeLimits(max_tokens=BUDGET), EpisodeErrorCounter())


def _envs(loop: EpisodeLoop) -> list[SafeEnv]:
    return [SafeEnv(make_env("arithmetic"), loop.errors) for _ in range(2)]


def _groups(loop: EpisodeLoop, tasks: list[Task]) -> list:
    """The finished GroupRuns of `tasks`, two episodes each, in order."""
    done = run_groups(loop, [(task, _envs(loop)) for task in tasks])
    return sorted(done, key=lambda group: int(group.key[1:]))


def test_the_loop_counts_a_groups_episodes_over_the_budget(char_tokenizer):
    long, short = _groups(_loop(char_tokenizer), [LONG, SHORT])
    assert (long.over_budget, short.over_budget) == (2, 0)


def test_a_worker_whose_prompts_never_fit_stops_naming_the_setting(char_tokenizer):
    loop = _loop(char_tokenizer)
    watch = PromptBudgetWatch("w0-abc", loop)
    runs = _groups(loop, [LONG] * PROMPT_CHECK_GROUPS)
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
    loop = _loop(char_tokenizer)
    watch = PromptBudgetWatch("w0", loop)
    for run in _groups(loop, [LONG, SHORT] + [LONG] * (PROMPT_CHECK_GROUPS + 1)):
        watch.saw(run)
    assert watch.fits


def test_long_prompts_ending_before_the_first_fitting_group_do_not_stop_a_worker(char_tokenizer):
    """Over-budget groups end at once, fitting ones only once generated: with many groups in flight,
    more than PROMPT_CHECK_GROUPS over-budget ones end before the first fitting one does. The watch
    sees each group as the worker does, after the engine step it ended in."""
    loop = _loop(char_tokenizer, steps_to_finish=4)
    watch = PromptBudgetWatch("w0", loop)
    finished, order = [], []
    for i, task in enumerate([SHORT, LONG, LONG] * 6):  # a third of the prompts fit
        loop.start(f"g{i}", task, _envs(loop), SAMPLING, finished.append)
    deadline = time.monotonic() + 10.0
    while not loop.idle:
        loop.pump(wait_s=0.01)
        for run in finished:
            order.append(run.task)
            watch.saw(run)  # raised PromptsOverBudget when only a finished group could show prompts fit
        finished.clear()
        assert time.monotonic() < deadline, "the loop did not finish its groups"
    assert order.index(SHORT) >= PROMPT_CHECK_GROUPS  # the order the worker met
    assert watch.fits and watch.over_budget == 0


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


def test_a_worker_stopped_over_budget_logs_one_warning_without_a_traceback(caplog):
    failure = PromptsOverBudget("rollout worker w0: 8 of its tasks had prompts that left no room to generate")
    worker = _stopped_worker(None)

    def take_jobs():
        raise failure

    worker._take_jobs = take_jobs
    with caplog.at_level(logging.WARNING, logger="actors.rollout_worker"):
        worker._serve()
    assert worker._failure is failure
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in caplog.records] == [
        (logging.WARNING, f"w0: {failure}", None)]
