"""Sync mode's production of one batch (cluster.driver.produce_on_policy), on a local Ray with
stand-in workers that count what they produce in a shared tally, or fail: a worker lost while loading
weights or producing (its process died, or its engine thread ended) is replaced and the batch is
still made in full, also when its replacement dies warming up; any other error stops the run, as
does a worker that does not answer in time. A worker running an evaluation (which answers nothing
else until it ends, as a real one loads no new weights) is left out, or waited for if every worker
runs one. The real workers' path is covered by the sync case of the integration tests
(tests/integration/test_pipeline.py)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
import ray

from actors.rollout_worker import WorkerStopped
from cluster import driver
from cluster.config import RunConfig
from cluster.errors import RunFailed
from cluster.evaluation import Evaluations
from tests.cluster.conftest import stand_in_pool


@ray.remote
class Tally:
    def __init__(self) -> None:
        self.groups = 0

    def add(self, count: int) -> None:
        self.groups += count

    def total(self) -> int:
        return self.groups


EVAL_S = 2.0  # an evaluation's length: longer than the patched CALL_TIMEOUT_S


@ray.remote
class StandInWorker:
    """produce(k) adds k to the tally; evaluate() takes EVAL_S, and the actor answers one call at a time.
    `fails` names the call that fails and how: "stats:process" (stats() is the pool's readiness probe:
    it dies warming up), "sync:process", "produce:process" (the process exits), "produce:engine" (what
    a real worker raises once its engine thread has ended), "produce:bug" (any other error) or
    "sync:stuck" (it answers after EVAL_S)."""

    def __init__(self, tally, fails: str | None = None) -> None:
        self.tally, self.fails = tally, fails

    def stats(self) -> dict:
        self._maybe_fail("stats")
        return {}

    def _maybe_fail(self, call: str) -> None:
        if self.fails == f"{call}:process":
            os._exit(1)
        if self.fails == f"{call}:engine":
            raise WorkerStopped("w0 stopped: RuntimeError: engine step failed")
        if self.fails == f"{call}:bug":
            raise ValueError("a bug in produce")
        if self.fails == f"{call}:stuck":
            time.sleep(EVAL_S)

    def sync_weights(self) -> int:
        self._maybe_fail("sync")
        return 0

    def produce(self, num_groups: int) -> int:
        self._maybe_fail("produce")
        ray.get(self.tally.add.remote(num_groups))
        return num_groups

    def evaluate(self, temperatures, env) -> dict:
        time.sleep(EVAL_S)
        return {"policy_version": 3, **{str(t): {"accuracy": 0.5} for t in temperatures}}


pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture
def short_calls(monkeypatch):
    monkeypatch.setattr(driver, "CALL_TIMEOUT_S", EVAL_S / 4)


def produce_with(fails: str | None, *replacements_fail: str, size: int = 2, num_groups: int = 8,
                 evaluating: bool = False) -> tuple[int, SimpleNamespace, list[str]]:
    """(groups tallied, the run, its notes) after one batch made by `size` workers, the first failing
    as `fails` says (and running an evaluation if `evaluating`), its first replacements as
    `replacements_fail` say; the others are healthy."""
    tally = Tally.options(num_cpus=0).remote()
    first, others = {"tally": tally, "fails": fails}, [{"tally": tally}] * (size - 1)
    replacements = [{"tally": tally, "fails": f} for f in replacements_fail] + [{"tally": tally}] * 3
    pool = stand_in_pool(StandInWorker, size, first, *others, *replacements)
    notes: list[str] = []
    cfg = RunConfig()
    run = SimpleNamespace(workers=pool, cfg=cfg, note=notes.append, evaluations=Evaluations(cfg, pool, 30.0))
    if evaluating:
        run.evaluations.start("step 1")  # on the first ready worker
    driver.produce_on_policy(run, num_groups)
    return ray.get(tally.total.remote()), run, notes


def test_a_batch_is_split_over_the_ready_workers():
    groups, run, notes = produce_with(None)
    assert groups == 8 and run.workers.restarts == 0 and notes == []


@pytest.mark.parametrize(("fails", "reason"), [("sync:process", "ActorDiedError"),
                                                ("produce:process", "ActorDiedError"),
                                                ("produce:engine", "WorkerStopped: w0 stopped: RuntimeError")])
def test_a_worker_lost_in_sync_mode_is_replaced_and_the_batch_made_in_full(fails, reason):
    groups, run, notes = produce_with(fails)
    assert groups == 8
    assert run.workers.restarts == 1 and len(notes) == 1 and f"died ({reason}" in notes[0]


def test_a_replacement_that_dies_warming_up_is_replaced_too():
    groups, run, notes = produce_with("produce:process", "stats:process", size=1)
    assert groups == 8
    assert run.workers.restarts == 2 and len(notes) == 2 and all("died (ActorDiedError" in note for note in notes)


def test_an_error_that_is_not_a_lost_worker_stops_the_run():
    with pytest.raises(ray.exceptions.RayTaskError, match="a bug in produce"):
        produce_with("produce:bug")


@pytest.mark.usefixtures("short_calls")
def test_a_worker_running_an_evaluation_is_left_out_and_the_others_make_the_batch():
    groups, run, notes = produce_with(None, evaluating=True)
    assert groups == 8 and run.workers.restarts == 0 and notes == []
    assert run.evaluations.wait()["eval_policy_version"] == 3  # still there to be collected


@pytest.mark.usefixtures("short_calls")
def test_when_every_worker_runs_an_evaluation_production_waits_for_one():
    groups, run, notes = produce_with(None, size=1, evaluating=True)
    assert groups == 8 and run.workers.restarts == 0 and notes == []


@pytest.mark.usefixtures("short_calls")
def test_a_worker_that_does_not_load_the_weights_in_time_stops_the_run_naming_it():
    with pytest.raises(RunFailed, match=r"rollout worker w0-\w+ did not answer"):
        produce_with("sync:stuck")
