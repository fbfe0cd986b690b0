"""Finding a run's shards again from its directory (for `tidal replay audit`): servers of our own
are started on its data only when none of its shards listens any more."""

from __future__ import annotations

import pytest
import yaml

from buffer import ReplayConfig, ShardAuthError, ShardUnavailable
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
        with pytest.raises(ShardAuthError):
            RunShards.open(run_dir)  # the auditor has no password: the live shard is not "gone"
        assert (conf.read_text() if conf.is_file() else None) == before
        assert len(live.started) == 1 and live.started[0].process.poll() is None


def test_a_run_without_recorded_shards_is_named(tmp_path):
    run_dir = _run_dir(tmp_path, ReplayConfig(num_shards=1, password=None))
    with pytest.raises(ShardUnavailable, match="records no replay shards"):
        RunShards.open(run_dir)


def test_a_finished_runs_data_is_opened_on_servers_of_our_own(tmp_path, monkeypatch):
    monkeypatch.delenv("TIDAL_REDIS_PASSWORD", raising=False)
    config = ReplayConfig(num_shards=2, password=None)
    run_dir = _run_dir(tmp_path, config)
    with RunShards.start(config, run_dir) as live:
        recorded = list(live.urls)
    with RunShards.open(run_dir) as reopened:
        assert len(reopened.started) == 2 and reopened.urls != recorded
