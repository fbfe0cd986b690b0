"""Collective weight backend: a worker re-registers a new address each time its group times out
(every `timeout_s` + 1 s while no learner is up). The channel keeps only the latest address per
worker, and the learner's broadcaster joins new workers without one dead address holding up the rest.
Real WeightChannel, receivers and broadcaster over gloo on a local Ray, with timeouts of seconds."""

from __future__ import annotations

import time

import pytest
import ray
import torch

import learner.weight_broadcast as weight_broadcast
from actors.weight_receiver import CollectiveReceiver
from buffer.ports import free_port
from cluster.weight_channel import WeightChannel
from learner.weight_broadcast import WeightBroadcaster

TIMEOUT_S = 1.0


@pytest.fixture
def channel(local_ray, monkeypatch):
    monkeypatch.setattr(weight_broadcast, "HEARTBEAT_S", TIMEOUT_S / 4)  # heartbeats well inside the timeout
    channel = WeightChannel.remote()
    ray.get(channel.set_manifest.remote([("w", (4,), "float32")]))  # as a learner that ran before left it
    return channel


def _receives(receiver: CollectiveReceiver, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not receiver.newer():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_channel_hands_out_only_each_workers_latest_address(local_ray):
    channel = WeightChannel.remote()
    for name, port in [("w0", 1), ("w1", 2), ("w0", 3), ("w2", 4), ("w0", 5)]:
        ray.get(channel.register_peer.remote(name, "10.0.0.1", port))
    ray.get(channel.peer_gone.remote("w2"))
    assert ray.get(channel.peer_changes.remote()) == (["w2"], [("w0", "10.0.0.1", 5), ("w1", "10.0.0.1", 2)])
    assert ray.get(channel.peer_changes.remote()) == ([], [])


def test_a_worker_reconnects_to_a_new_learner_after_an_outage_of_several_timeouts(channel):
    receiver = CollectiveReceiver(channel, "w0", 1 << 20, timeout_s=TIMEOUT_S)
    time.sleep(5 * TIMEOUT_S)  # no learner: the receiver registers an address each timeout_s + 1 s
    broadcaster = WeightBroadcaster(channel, {"w": torch.zeros(4)}, 1 << 20, TIMEOUT_S)
    try:
        broadcaster.publish((0, 1), {"w": torch.ones(4)})
        assert _receives(receiver, within_s=6 * TIMEOUT_S), f"never reconnected: {broadcaster.failures}"
        assert receiver.fetch()[0] == (0, 1)
    finally:
        broadcaster.close()
        # its thread would go on registering after the module's Ray shut down, which kills the process
        assert receiver.close(wait_s=TIMEOUT_S + 5)


def test_a_dead_workers_address_does_not_hold_up_a_live_worker(channel):
    ray.get(channel.register_peer.remote("ghost", "127.0.0.1", free_port("")))  # nobody listens there
    receiver = CollectiveReceiver(channel, "w1", 1 << 20, timeout_s=3 * TIMEOUT_S)
    broadcaster = WeightBroadcaster(channel, {"w": torch.zeros(4)}, 1 << 20, 3 * TIMEOUT_S)
    try:
        broadcaster.publish((0, 1), {"w": torch.ones(4)})
        assert _receives(receiver, within_s=1.5 * TIMEOUT_S)  # joining the ghost takes 3 * TIMEOUT_S to fail
    finally:
        broadcaster.close()
        assert receiver.close(wait_s=3 * TIMEOUT_S + 5)
