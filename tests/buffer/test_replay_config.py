import pickle

import pytest
from pydantic import ValidationError

from buffer import InsecureShardError, ReplayClient, ReplayConfig
from buffer.rate_limiters import MinSize, Queue, SampleToInsertRatio


def test_unknown_selector_lists_valid_names():
    with pytest.raises(ValidationError, match=r"selector[\s\S]*valid names: fifo, lifo, prioritized, uniform"):
        ReplayConfig(selector="greedy")


def test_unknown_field_is_named():
    with pytest.raises(ValidationError, match="capacity_per_shrd"):
        ReplayConfig(capacity_per_shrd=3)


def test_rate_limiter_union_by_kind():
    config = ReplayConfig(rate_limiter={"kind": "queue", "size": 4})
    assert config.rate_limiter == Queue(size=4)
    assert config.rate_limiter.params() == (1.0, 1, 0.0, 4.0)
    with pytest.raises(ValidationError, match="rate_limiter"):
        ReplayConfig(rate_limiter={"kind": "token_bucket"})


def test_sample_to_insert_ratio_params_and_deadlock_check():
    limiter = SampleToInsertRatio(samples_per_insert=2.0, min_size_to_sample=10, error_buffer=5.0)
    assert limiter.params() == (2.0, 10, 15.0, 25.0)  # offset 2 * 10 = 20, +- 5
    with pytest.raises(ValidationError, match="error_buffer=1.5 can deadlock"):
        SampleToInsertRatio(samples_per_insert=2.0, min_size_to_sample=10, error_buffer=1.5)


def test_min_size_larger_than_capacity_is_rejected():
    with pytest.raises(ValidationError, match="capacity_per_shard 5"):
        ReplayConfig(capacity_per_shard=5, rate_limiter=MinSize(min_size=6))


def test_password_comes_from_environment(monkeypatch):
    monkeypatch.setenv("TIDAL_REDIS_PASSWORD", "s3cret")
    config = ReplayConfig()
    assert config.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)


def test_non_loopback_redis_without_password_is_refused(monkeypatch):
    monkeypatch.delenv("TIDAL_REDIS_PASSWORD", raising=False)
    with pytest.raises(InsecureShardError, match="10.0.0.7:6379"):
        ReplayClient(ReplayConfig(), ["redis://10.0.0.7:6379"])
    ReplayClient(ReplayConfig(password="pw"), ["redis://10.0.0.7:6379"])  # no connection is opened yet


def test_client_pickles_by_address():
    client = ReplayClient(ReplayConfig(namespace="p"), ["redis://127.0.0.1:1"], seed=3)
    copy = pickle.loads(pickle.dumps(client))
    assert copy.shard_urls == ["redis://127.0.0.1:1"] and copy.config == client.config
