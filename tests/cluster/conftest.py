"""A local Ray for the driver-side tests that run stand-in actors, and a worker pool of them."""

from __future__ import annotations

import shutil
import tempfile

import pytest
import ray

from cluster.scaling import RestartBudget
from cluster.worker_pool import WorkerPool


@pytest.fixture(scope="module")
def local_ray():
    temp_dir = tempfile.mkdtemp(prefix="tl", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@ray.remote
class StandInAdmission:
    def worker_lost(self, name: str) -> int:
        return 0


def stand_in_pool(worker_class, size: int, *behaviours: dict, timeout_s: float = 30.0) -> WorkerPool:
    """A ready pool of `size` `worker_class` actors, each made from the next behaviour (its
    constructor's keyword arguments) in order; a replacement gets the next unused one."""
    queue = list(behaviours)

    def start(slot: int, name: str):
        return worker_class.options(num_cpus=0).remote(**queue.pop(0))

    pool = WorkerPool(start, StandInAdmission.options(num_cpus=0).remote(), False, RestartBudget(3, 600.0))
    pool.start(size)
    pool.wait_ready(timeout_s)
    return pool
