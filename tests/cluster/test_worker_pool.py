"""The rollout fleet's supervision (cluster.worker_pool), on a local Ray with stand-in workers: a
worker that dies warming up is replaced within its restart budget, and waiting for readiness is
bounded; a worker stopped with groups in flight frees their admission room, whether scale-down
gave up on its drain or stop_all killed it."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import pytest
import ray

from cluster import worker_pool
from cluster.admission import RemoteAdmissionController
from cluster.errors import RunFailed
from cluster.scaling import RestartBudget
from cluster.worker_pool import WorkerCrashLoop, WorkerPool
from envs import CurriculumConfig
from tests.cluster.conftest import stand_in_pool

pytestmark = pytest.mark.usefixtures("local_ray")


@ray.remote
class Warming:
    """stats(), the pool's readiness probe, answers once warmed up; `warm_up` says how that ends."""

    def __init__(self, warm_up: str = "ok") -> None:
        self.warm_up = warm_up

    def stats(self) -> dict:
        if self.warm_up == "dies":  # e.g. the engine ran out of memory loading the model
            os._exit(1)
        if self.warm_up == "hangs":
            time.sleep(3600)
        return {}


def test_a_worker_that_dies_warming_up_is_replaced():
    pool = stand_in_pool(Warming, 2, {"warm_up": "dies"}, {}, {})
    assert len(pool.ready) == 2 and pool.restarts == 1 and len(pool.last_errors) == 1


def test_a_slot_that_keeps_dying_warming_up_stops_the_run():
    with pytest.raises(WorkerCrashLoop, match="died 4 times"):
        stand_in_pool(Warming, 1, *[{"warm_up": "dies"}] * 4)


def test_waiting_for_readiness_is_bounded():
    with pytest.raises(RunFailed, match="not every rollout worker was ready within 1s"):
        stand_in_pool(Warming, 1, {"warm_up": "hangs"}, timeout_s=1.0)


@ray.remote(max_concurrency=3)
class Admitted:
    """Admits 3 groups when it starts and never finishes them: stop() does not end its run() (a
    drain that outlasts its deadline), so the pool ends it with the groups still in flight."""

    def __init__(self, name: str, admission) -> None:
        ray.get(admission.admit.remote(name, 3))

    def stats(self) -> dict:
        return {}

    def run(self) -> None:
        threading.Event().wait()

    def stop(self) -> None:
        pass


def scale_down(pool: WorkerPool, monkeypatch) -> None:
    monkeypatch.setattr(worker_pool, "STOP_TIMEOUT_S", 0.0)  # its drain's deadline passes at once
    pool.resize(0)
    pool.check()


def stop_all(pool: WorkerPool, monkeypatch) -> None:
    pool.stop_all(0.1)  # its bound passes long before the drain's deadline: the worker is killed


@pytest.mark.parametrize("stop", [scale_down, stop_all])
def test_a_worker_stopped_with_groups_in_flight_frees_their_admission_room(stop, monkeypatch):
    admission = RemoteAdmissionController.remote(4, 0, CurriculumConfig(), ["a"], 0,
                                                 SimpleNamespace(size=lambda: 0))  # the stand-ins store nothing
    pool = WorkerPool(lambda slot, name: Admitted.options(num_cpus=0).remote(name, admission), admission, True,
                      RestartBudget(3, 600.0))
    pool.start(1)
    pool.wait_ready(30)
    stop(pool, monkeypatch)
    assert ray.get(admission.totals.remote())["in_flight"] == 0
    assert pool.counts()["groups/lost_in_flight"] == 3
