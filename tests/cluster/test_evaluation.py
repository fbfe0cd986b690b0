"""Evaluations beside training, on a local Ray with stand-in workers that answer evaluate() after a
set delay (or die in it, or have their engine thread fail): a running evaluation is collected once
it ends, never before; a new one waits for the previous; a worker lost during one is replaced and
the evaluation runs again on another; one past its bound stops the run. The real workers' path is
covered by the integration tests (tests/integration/test_pipeline.py, test_hf_engine_run.py) and
the demo's end-to-end run."""

from __future__ import annotations

import os
import time

import pytest
import ray

from actors.rollout_worker import WorkerStopped
from cluster.config import EvalConfig, RunConfig
from cluster.errors import RunFailed
from cluster.evaluation import Evaluations, eval_record
from cluster.worker_pool import WorkerPool
from tests.cluster.conftest import stand_in_pool


@ray.remote
class StandInWorker:
    """evaluate() answers after `delay_s` with accuracy `accuracy` at version `version`; or it fails:
    `fails="process"` exits the process in it, `fails="engine"` raises what a real worker raises
    once its engine thread has ended."""

    def __init__(self, delay_s: float, accuracy: float, version: int, fails: str | None) -> None:
        self.delay_s, self.accuracy, self.version, self.fails = delay_s, accuracy, version, fails

    def stats(self) -> dict:
        return {}

    def evaluate(self, temperatures, env) -> dict:
        if self.fails == "process":
            os._exit(1)
        if self.fails == "engine":
            raise WorkerStopped("w0 stopped: ConfigMismatchError: the replay table has other settings")
        time.sleep(self.delay_s)
        return {"policy_version": self.version, "episodes": 4,
                **{str(t): {"accuracy": self.accuracy - t / 2} for t in temperatures}}


pytestmark = pytest.mark.usefixtures("local_ray")


def make_pool(*behaviours: dict) -> WorkerPool:
    """One worker; a replacement gets the next unused behaviour."""
    return stand_in_pool(StandInWorker, 1, *behaviours)


def healthy(delay_s: float = 0.0, accuracy: float = 0.75, version: int = 7) -> dict:
    return {"delay_s": delay_s, "accuracy": accuracy, "version": version, "fails": None}


def test_a_running_evaluation_is_collected_once_it_ends():
    evaluations = Evaluations(RunConfig(), make_pool(healthy(delay_s=1.0)), timeout_s=30)
    assert evaluations.poll() == {}  # none started
    assert evaluations.start("step 10") == {}
    assert evaluations.poll() == {}  # still running
    deadline = time.monotonic() + 20
    while not (record := evaluations.poll()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert record == {"eval_policy_version": 7, "eval_accuracy": 0.25, "eval_accuracy_greedy": 0.75}
    assert evaluations.poll() == {}  # collected once


def test_starting_an_evaluation_waits_for_the_previous_one_and_returns_it():
    cfg = RunConfig.model_validate({"eval": {"greedy": False}})
    evaluations = Evaluations(cfg, make_pool(healthy(delay_s=0.5)), timeout_s=30)
    evaluations.start("step 10")
    assert evaluations.start("step 20") == {"eval_policy_version": 7, "eval_accuracy": 0.25}
    assert evaluations.wait() == {"eval_policy_version": 7, "eval_accuracy": 0.25}
    assert evaluations.wait() == {}


@pytest.mark.parametrize(("fails", "error"), [("process", "ActorDiedError"), ("engine", "WorkerStopped")])
def test_a_worker_lost_during_an_evaluation_is_replaced_and_it_runs_on_another(fails, error):
    pool = make_pool({"delay_s": 0.0, "accuracy": 0.0, "version": 0, "fails": fails}, healthy(version=9))
    evaluations = Evaluations(RunConfig(), pool, timeout_s=60)
    evaluations.start("step 10")
    assert evaluations.wait()["eval_policy_version"] == 9
    assert pool.restarts == 1 and next(iter(pool.last_errors.values())).startswith(error)


def test_an_evaluation_that_fails_on_every_worker_stops_the_run_naming_why():
    engine_failed = {"delay_s": 0.0, "accuracy": 0.0, "version": 0, "fails": "engine"}
    evaluations = Evaluations(RunConfig(), make_pool(*[engine_failed] * 4), timeout_s=60)
    evaluations.start("step 10")
    with pytest.raises(RunFailed, match=r"failed on 3 rollout workers in a row; the last: WorkerStopped: "
                       r"w0 stopped: ConfigMismatchError: the replay table has other settings$"):
        evaluations.wait()


def test_an_evaluation_past_its_bound_stops_the_run():
    evaluations = Evaluations(RunConfig(), make_pool(healthy(delay_s=5.0)), timeout_s=0.5)
    evaluations.start("step 30")
    with pytest.raises(RunFailed, match=r"the evaluation of step 30 did not end within 0s"):
        evaluations.wait()
    assert evaluations.poll() == {}


def test_a_discarded_evaluation_is_never_recorded():
    evaluations = Evaluations(RunConfig(), make_pool(healthy()), timeout_s=30)
    evaluations.start("step 40")
    evaluations.discard()
    time.sleep(0.5)
    assert evaluations.poll() == {} and evaluations.wait() == {}


def test_each_eval_env_keeps_the_policy_version_it_measured():
    """Eval envs run on different workers, which may have loaded different versions."""
    results = {"": {"policy_version": 10, "1.0": {"accuracy": 0.5}},
               "_hard": {"policy_version": 11, "1.0": {"accuracy": 0.2}}}
    assert eval_record(EvalConfig(greedy=False), results) == {
        "eval_policy_version": 10, "eval_accuracy": 0.5, "eval_policy_version_hard": 11, "eval_accuracy_hard": 0.2}
