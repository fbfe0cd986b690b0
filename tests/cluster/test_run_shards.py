"""Finding a run's shards again from its directory (for `tidal replay audit`): servers of our own
are started on its data only when none of its shards listens any more."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis
import yaml

from buffer import (Group, ReplayClient, ReplayConfig, ShardAuthError, ShardUnavailable, Trajectory,
                    create_table)
from cluster.run_shards import RunShards


def _run_dir(tmp_path, config: ReplayConfig):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    replay = config.model_dump(mode="json", exclude={"password"})  # as the run writes it: never the secret
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"replay": replay}))
    return run_dir


def test_a_live_shard_that_wants_a_password_is_not_replaced_by_servers_on_its_data(tmp_path, monkeypatch):
    monkeypatch.delenv("TIDAL_REDIS_PASSWORD", raising=False)
    config = ReplayConfig(num_shards=1, password="s3cret")
    run_dir = _run_dir(tmp_path, config)
    with RunShards.start(config, run_dir) as live:
        conf = (run_dir / "replay" / "shard-0" / "redis.conf")
        before = conf.read_text() if conf.is_file() else None
        with pytest.raises(ShardAuthError, match=r"replay shard 127\.0\.0\.1:\d+ requires a password"):
            RunShards.open(run_dir)  # the auditor has no password: the live shard is not "gone"
        assert (conf.read_text() if conf.is_file() else None) == before
        assert len(live.started) == 1 and live.started[0].process.poll() is None


def test_a_run_without_recorded_shards_is_named(tmp_path):
    run_dir = _run_dir(tmp_path, ReplayConfig(num_shards=1, password=None))
    with pytest.raises(ShardUnavailable, match="records no replay shards"):
        RunShards.open(run_dir)


def _group(group_id: str) -> Group:
    trajectories = [Trajectory(prompt_ids=np.arange(3), completion_ids=np.arange(4), loss_mask=np.ones(4),
                               behavior_logprobs=np.full(4, -0.5), policy_versions=np.zeros(4, np.int32),
                               reward=r, task_id="t0") for r in (0.0, 1.0)]
    return Group(group_id, "t0", "arith", time.time(), trajectories)


def _stored_ids(urls: list[str], namespace: str) -> list[list[str]]:
    """Each shard's group ids, oldest first (its FIFO index, read directly)."""
    ids = []
    for url in urls:
        with redis.Redis.from_url(url) as conn:
            ids.append([gid.decode() for gid in conn.zrange(f"{namespace}:fifo", 0, -1)])
    return ids


def test_a_finished_runs_data_is_opened_on_servers_of_our_own(tmp_path, monkeypatch):
    """The servers started on the data hold the run's table again, under the namespace the run recorded:
    the groups stored before the run ended are all there, on the same shards (not an empty table)."""
    monkeypatch.delenv("TIDAL_REDIS_PASSWORD", raising=False)
    config = ReplayConfig(num_shards=2, password=None)
    run_dir = _run_dir(tmp_path, config)
    group_ids = [f"w:{i}" for i in range(6)]
    with RunShards.start(config, run_dir) as live:
        recorded = list(live.urls)
        table = config.model_copy(update={"namespace": live.namespace})
        create_table(table, recorded)
        with ReplayClient(table, recorded) as client:
            assert client.insert_many([_group(gid) for gid in group_ids]) == [True] * 6
        stored = _stored_ids(recorded, live.namespace)
    assert sorted(sum(stored, [])) == group_ids and all(stored)  # spread over both shards
    with RunShards.open(run_dir) as reopened:
        assert len(reopened.started) == 2 and reopened.urls != recorded
        assert reopened.namespace == live.namespace == run_dir.name
        with ReplayClient.observer(reopened.urls, reopened.namespace) as observer:
            assert observer.size() == 6
        assert _stored_ids(reopened.urls, reopened.namespace) == stored
