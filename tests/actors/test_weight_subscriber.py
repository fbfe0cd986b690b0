"""The object-store weight subscriber against a real WeightChannel actor on a local Ray."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from actors.weights import WeightSubscriber
from cluster.weight_channel import WeightChannel


@pytest.fixture(scope="module")
def channel():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield WeightChannel.remote()
    ray.shutdown()


def _publish(channel, version: int, value: float, rewind: bool = False) -> tuple[int, int]:
    weights = [ray.put({"w": np.full(2, value, np.float32)})]
    return tuple(ray.get(channel.publish.remote(version, weights, rewind), timeout=30))


def test_a_rewind_to_version_0_is_loaded_by_a_worker_on_the_lost_timeline(channel):
    """A learner restored before its first checkpoint publishes version 0 of a new epoch: a worker
    that held version 5 must load it (it took only versions above 0 before, and sync waited forever)."""
    subscriber = WeightSubscriber(channel)
    assert not subscriber.newer(force=True)  # nothing published: the worker keeps its initial weights
    for version in range(1, 6):
        _publish(channel, version, float(version))
    assert subscriber.newer(force=True)
    head, state = subscriber.fetch()
    subscriber.loaded(head)
    assert head == (0, 5) and state["w"].tolist() == [5.0, 5.0]
    assert _publish(channel, 0, 0.0, rewind=True) == (1, 0)
    assert subscriber.newer(force=True)
    head, state = subscriber.fetch()
    subscriber.loaded(head)
    assert head == (1, 0) and state["w"].tolist() == [0.0, 0.0] and subscriber.head >= (1, 0)
