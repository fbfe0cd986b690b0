"""Fixtures: real redis-server processes on free loopback ports, stopped at the end."""

from __future__ import annotations

import itertools
import time
import uuid

import numpy as np
import pytest
import redis

from buffer import (Group, ReplayClient, ReplayConfig, Trajectory, create_table, start_local_shards,
                    stop_local_shards)

_sequence = itertools.count()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    started = start_local_shards(2, tmp_path_factory.mktemp("redis"))
    yield started
    stop_local_shards(started)


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"  # isolates tests that share the module's servers


def _make_group(rewards, *, group_id: str | None = None, version: int = 0, tokens: int = 8,
               task_id: str = "task-0", priority: float = 1.0) -> Group:
    trajectories = [
        Trajectory(prompt_ids=np.arange(3), completion_ids=np.arange(tokens) + i, loss_mask=np.ones(tokens),
                   behavior_logprobs=np.full(tokens, -0.25), policy_versions=np.full(tokens, version),
                   reward=float(r), task_id=task_id)
        for i, r in enumerate(rewards)
    ]
    return Group(group_id or f"w:{next(_sequence)}", task_id, "arith", time.time(), trajectories, priority)


def _make_client(urls, namespace, **overrides) -> ReplayClient:
    """A client of a table with these settings; the first client of a namespace creates the table, as
    the run does (create_table checks that later ones ask for the same settings)."""
    config = ReplayConfig(namespace=namespace, **{"insert_timeout_s": 5.0, "sample_timeout_s": 5.0, **overrides})
    create_table(config, list(urls))
    return ReplayClient(config, list(urls), seed=1234)


def _stored_ids(url: str, namespace: str) -> list[str]:
    """Group ids a shard holds, oldest first (reads the shard's FIFO index directly)."""
    with redis.Redis.from_url(url) as conn:
        return [gid.decode() for gid in conn.zrange(f"{namespace}:fifo", 0, -1)]


@pytest.fixture
def make_group():
    return _make_group


@pytest.fixture
def make_client():
    clients = []

    def make(urls, namespace, **overrides):
        clients.append(_make_client(urls, namespace, **overrides))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def stored_ids():
    return _stored_ids
