"""Batched inserts (insert_many) and payloads fetched outside the sample script."""

import threading

import pytest
import redis

from buffer import RateLimiterTimeout
from buffer.client import stable_hash
from buffer.rate_limiters import Queue
from buffer.scripts import SCRIPT_NAMES


def _staged_keys(url: str, namespace: str) -> list[bytes]:
    with redis.Redis.from_url(url) as conn:
        return list(conn.scan_iter(f"{namespace}:stage:*"))


def test_insert_many_follows_input_order_dedups_and_routes_home(shards, namespace, make_client, make_group,
                                                                 stored_ids):
    urls = [s.url for s in shards]
    client = make_client(urls, namespace)
    first = [make_group([0.0, 1.0], group_id=f"b:{i}") for i in range(6)]
    repeat_inside = make_group([0.0, 1.0], group_id="b:2")  # same id as first[2], in the same call
    assert client.insert_many([*first, repeat_inside]) == [True] * 6 + [False]

    fresh = make_group([0.0, 1.0], group_id="b:new")
    assert client.insert_many([first[4], fresh, first[0]]) == [False, True, False]  # across calls
    assert client.insert_many([]) == []

    expected = {0: [], 1: []}
    for group in [*first, fresh]:
        expected[stable_hash(group.group_id) % 2].append(group.group_id)
    assert expected[0] and expected[1]  # the ids above do cover both shards
    for index, url in enumerate(urls):
        assert stored_ids(url, namespace) == expected[index]  # home shard, in input order
        assert _staged_keys(url, namespace) == []  # duplicates left no staged payload behind
    assert [s.group.group_id for s in client.sample(1, learner_version=0)][0] in expected[0] + expected[1]


def test_insert_many_reruns_its_scripts_on_a_shard_that_lost_them(shards, namespace, make_client, make_group,
                                                                 stored_ids):
    """A restarted shard has no scripts (NOSCRIPT): each chunk's script is loaded and run again on
    the payloads staged before it, and all of them are stored, once. The scripts are loaded once,
    not once per chunk that came back NOSCRIPT."""
    client = make_client([shards[0].url], namespace)
    client.insert(make_group([0.0, 1.0], group_id="before"))  # first contact: the scripts are loaded
    with redis.Redis.from_url(shards[0].url) as conn:
        conn.script_flush()
        conn.config_resetstat()
        groups = [make_group([0.0, 1.0], group_id=f"n:{i}") for i in range(7)]  # two insert scripts
        assert client.insert_many(groups) == [True] * 7
        assert conn.info("commandstats")["cmdstat_script|load"]["calls"] == len(SCRIPT_NAMES)
    assert stored_ids(shards[0].url, namespace) == ["before", *(g.group_id for g in groups)]
    assert _staged_keys(shards[0].url, namespace) == []


def test_insert_many_retries_blocked_groups_until_room(shards, namespace, make_client, make_group, stored_ids):
    url = shards[0].url
    client = make_client([url], namespace, rate_limiter=Queue(size=2), selector="fifo")
    groups = [make_group([0.0, 1.0], group_id=f"q:{i}") for i in range(4)]
    consumer = threading.Timer(0.3, lambda: client.sample(2, learner_version=0))  # lets two more in
    consumer.start()
    try:
        assert client.insert_many(groups, timeout=5.0) == [True] * 4
    finally:
        consumer.join()
    assert stored_ids(url, namespace) == ["q:0", "q:1", "q:2", "q:3"]  # retried ones kept their order
    assert _staged_keys(url, namespace) == []  # blocked attempts deleted their staged payloads

    more = [make_group([0.0, 1.0], group_id=f"q:{i}") for i in (4, 5)]
    with pytest.raises(RateLimiterTimeout, match=r"q:4, q:5 into shard 0 \(127\.0\.0\.1:\d+\).*inserts=4 samples=2"):
        client.insert_many(more, timeout=0.2)


def test_sample_skips_a_payload_evicted_after_the_draw(shards, namespace, make_client, make_group):
    url = shards[0].url
    client = make_client([url], namespace, selector="uniform", capacity_per_shard=2)
    stored = client.insert_many([make_group([0.0, 1.0], group_id="gone"), make_group([0.0, 1.0], group_id="kept")])
    assert stored == [True, True]  # a list is truthy whatever it holds: compare each group's result
    shard = client._shards[0]
    fetch = shard._fetch_payloads

    def fetch_after_eviction(group_ids):
        # a concurrent insert's eviction removes "gone" (the oldest) between the sample script and the MGET
        shard._fetch_payloads = fetch
        assert client.insert(make_group([0.0, 1.0], group_id="new"))
        return fetch(group_ids)

    shard._fetch_payloads = fetch_after_eviction
    sampled = client.sample(6, learner_version=0)
    assert {s.group.group_id for s in sampled} <= {"kept", "new"} and len(sampled) == 6
    with redis.Redis.from_url(url) as conn:
        assert not conn.exists(f"{namespace}:quarantine")  # a vanished payload is not a corrupt one
