"""Sync mode's production of one batch (cluster.driver.produce_on_policy), on a local Ray with
stand-in workers that count what they produce in a shared tally, or fail: a worker lost while loading
weights or producing (its process died, or its engine thread ended) is replaced and the batch is
still made in full, also when its replacement dies warming up; any other error stops the run. The
real workers' path is covered by the sync case of the integration tests
(tests/integration/test_pipeline.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import ray

from actors.rollout_worker import WorkerStopped
from cluster.config import RunConfig
from cluster.driver import produce_on_policy
from tests.cluster.conftest import stand_in_pool


@ray.remote
class Tally:
    def __init__(self) -> None:
        self.groups = 0

    def add(self, count: int) -> None:
        self.groups += count

    def total(self) -> int:
        return self.groups


@ray.remote
class StandInWorker:
    """produce(k) adds k to the tally; `fails` names the call that fails and how: "stats:process"
    (stats() is the pool's readiness probe: it dies warming up), "sync:process", "produce:process"
    (the process exits), "produce:engine" (what a real worker raises once its engine thread has
    ended) or "produce:bug" (any other error)."""

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

    def sync_weights(self) -> int:
        self._maybe_fail("sync")
        return 0

    def produce(self, num_groups: int) -> int:
        self._maybe_fail("produce")
        ray.get(self.tally.add.remote(num_groups))
        return num_groups


pytestmark = pytest.mark.usefixtures("local_ray")


def produce_with(fails: str | None, *replacements_fail: str, size: int = 2,
                 num_groups: int = 8) -> tuple[int, object, list[str]]:
    """(groups tallied, the pool, the run's notes) after one batch made by `size` workers, the first
    failing as `fails` says, its first replacements as `replacements_fail` say; the others are healthy."""
    tally = Tally.options(num_cpus=0).remote()
    first, others = {"tally": tally, "fails": fails}, [{"tally": tally}] * (size - 1)
    replacements = [{"tally": tally, "fails": f} for f in replacements_fail] + [{"tally": tally}] * 3
    pool = stand_in_pool(StandInWorker, size, first, *others, *replacements)
    notes: list[str] = []
    run = SimpleNamespace(workers=pool, cfg=RunConfig(), note=notes.append)
    produce_on_policy(run, num_groups)
    return ray.get(tally.total.remote()), pool, notes


def test_a_batch_is_split_over_the_ready_workers():
    groups, pool, notes = produce_with(None)
    assert groups == 8 and pool.restarts == 0 and notes == []


@pytest.mark.parametrize(("fails", "reason"), [("sync:process", "ActorDiedError"),
                                                ("produce:process", "ActorDiedError"),
                                                ("produce:engine", "WorkerStopped: w0 stopped: RuntimeError")])
def test_a_worker_lost_in_sync_mode_is_replaced_and_the_batch_made_in_full(fails, reason):
    groups, pool, notes = produce_with(fails)
    assert groups == 8
    assert pool.restarts == 1 and len(notes) == 1 and f"died ({reason}" in notes[0]


def test_a_replacement_that_dies_warming_up_is_replaced_too():
    groups, pool, notes = produce_with("produce:process", "stats:process", size=1)
    assert groups == 8
    assert pool.restarts == 2 and len(notes) == 2 and all("died (ActorDiedError" in note for note in notes)


def test_an_error_that_is_not_a_lost_worker_stops_the_run():
    with pytest.raises(ray.exceptions.RayTaskError, match="a bug in produce"):
        produce_with("produce:bug")
