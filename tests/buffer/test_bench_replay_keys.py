"""The replay bench's raw side reads the payloads the table holds (bench/replay.py reads the
table's key layout: if that changed, its MGETs would read nothing and look fast)."""

import numpy as np
import pytest
import redis

from bench.replay import _drawn_payload_keys


def test_drawn_keys_are_payloads_the_table_holds(shards, namespace, make_client, make_group):
    url = shards[0].url
    client = make_client([url], namespace)
    groups = [make_group([0.0, 1.0], group_id=f"k:{i}") for i in range(5)]
    assert client.insert_many(groups) == [True] * 5
    with redis.Redis.from_url(url) as conn:
        drawn = _drawn_payload_keys(conn, namespace, calls=3, batch=8, rng=np.random.default_rng(0))
        assert [len(keys) for keys in drawn] == [8, 8, 8]
        values = conn.mget([key for keys in drawn for key in keys])
    assert all(value is not None and len(value) > 100 for value in values)
    with redis.Redis.from_url(url) as conn, pytest.raises(RuntimeError, match="no payloads at the keys"):
        _drawn_payload_keys(conn, "no-such-table", calls=1, batch=8, rng=np.random.default_rng(0))
