"""Capacity with FIFO and lowest-priority removers, max_times_sampled and the staleness bound."""

import numpy as np
import pytest
import redis

from buffer import RateLimiterTimeout


def test_fifo_remover_evicts_the_oldest(shards, namespace, make_client, make_group, stored_ids):
    client = make_client([shards[0].url], namespace, capacity_per_shard=5)
    groups = [make_group([0.0, 1.0]) for _ in range(8)]
    for group in groups:
        client.insert(group)
    assert stored_ids(shards[0].url, namespace) == [g.group_id for g in groups[3:]]
    stats = client.stats().shards[0]
    assert (stats.size, stats.evictions["capacity"], stats.deletes) == (5, 3, 3)
    drawn = {s.group.group_id for s in client.sample(100, learner_version=0)}
    assert drawn <= {g.group_id for g in groups[3:]}


def test_a_batch_at_capacity_counts_each_eviction_once(shards, namespace, make_client, make_group, stored_ids):
    """One insert script stores a batch that evicts as it goes (its counters written once at the end)."""
    client = make_client([shards[0].url], namespace, capacity_per_shard=3)
    groups = [make_group([0.0, 1.0]) for _ in range(7)]
    assert client.insert_many(groups) == [True] * 7
    assert stored_ids(shards[0].url, namespace) == [g.group_id for g in groups[4:]]
    stats = client.stats().shards[0]
    assert (stats.size, stats.inserts, stats.evictions["capacity"], stats.deletes) == (3, 7, 4, 4)
    assert (stats.ledger["acked"], stats.ledger["left_capacity"]) == (7, 4)


def test_an_index_entry_whose_group_is_gone_is_dropped_not_evicted_forever(shards, namespace, make_client,
                                                                           make_group, stored_ids):
    """A group whose metadata vanished (a key deleted by hand, a partial restore) must not stay first
    in line: the eviction loop would find it again and again and never make room."""
    client = make_client([shards[0].url], namespace, capacity_per_shard=2)
    first, second, third = (make_group([0.0, 1.0]) for _ in range(3))
    client.insert_many([first, second])
    with redis.Redis.from_url(shards[0].url) as conn:
        conn.delete(f"{namespace}:m:{first.group_id}")
    assert client.insert(third)
    assert stored_ids(shards[0].url, namespace) == [second.group_id, third.group_id]


def test_lowest_priority_remover(shards, namespace, make_client, make_group, stored_ids):
    client = make_client([shards[0].url], namespace, capacity_per_shard=3, remover="lowest_priority",
                         initial_priority="producer")
    for group_id, p in [("a", 0.5), ("b", 0.1), ("c", 0.9), ("d", 0.3), ("e", 0.7)]:
        client.insert(make_group([0.0, 1.0], group_id=group_id, priority=p))
    # d (0.3) evicts b (0.1); e (0.7) evicts d (0.3)
    assert sorted(stored_ids(shards[0].url, namespace)) == ["a", "c", "e"]
    client.report_trained(0, [("c", 0.05)])  # updates move a group down the eviction order too
    client.insert(make_group([0.0, 1.0], group_id="f", priority=0.6))
    assert sorted(stored_ids(shards[0].url, namespace)) == ["a", "e", "f"]


def test_max_times_sampled_evicts_after_the_last_sample(shards, namespace, make_client, make_group, stored_ids):
    client = make_client([shards[0].url], namespace, max_times_sampled=3)
    group = make_group([0.0, 1.0])
    client.insert(group)
    assert [s.times_sampled for s in client.sample(2, learner_version=0)] == [1, 2]
    assert stored_ids(shards[0].url, namespace) == [group.group_id]
    assert [s.times_sampled for s in client.sample(1, learner_version=0)] == [3]
    assert stored_ids(shards[0].url, namespace) == []
    assert client.stats().shards[0].evictions["max_times_sampled"] == 1


def test_max_times_sampled_stops_a_batch_when_the_shard_runs_dry(shards, namespace, make_client, make_group):
    client = make_client([shards[0].url], namespace, max_times_sampled=1)
    for _ in range(3):
        client.insert(make_group([0.0, 1.0]))
    assert len({s.group.group_id for s in client.sample(3, learner_version=0)}) == 3  # each exactly once
    # each group was evicted after its one use: the sample waits on an empty shard, and says so
    with pytest.raises(RateLimiterTimeout, match=r"sample of 1 groups waited 0\.2s and got 0 .*\): empty\)$"):
        client.sample(1, learner_version=0, timeout=0.2)


def test_staleness_bound_evicts_and_never_returns(shards, namespace, make_client, make_group, stored_ids):
    client = make_client([s.url for s in shards], namespace, max_staleness=2)
    groups = {version: make_group([0.0, 1.0], version=version) for version in range(6)}
    for group in groups.values():
        client.insert(group)
    # learner at 5: versions 0, 1, 2 are more than 2 behind
    drawn = {s.group.group_id for s in client.sample(200, learner_version=5)}
    assert drawn == {groups[v].group_id for v in (3, 4, 5)}
    remaining = stored_ids(shards[0].url, namespace) + stored_ids(shards[1].url, namespace)
    assert sorted(remaining) == sorted(groups[v].group_id for v in (3, 4, 5))
    stats = client.stats(learner_version=5)
    assert stats.to_dict()["replay/evictions/stale"] == 3
    histogram = [sum(h) for h in zip(*(s.staleness_histogram for s in stats.shards))]
    assert histogram == [1, 1, 1, 0]  # ages 0, 1, 2 and beyond the bound
    assert not client.insert(make_group([0.0, 1.0], version=2))  # stale on arrival
    assert client.stats().to_dict()["replay/evictions/stale"] == 4


def test_weights_stay_finite_when_a_shard_empties_while_a_sample_waits(shards, namespace, make_client, make_group):
    """max_times_sampled=1 empties the shards mid-call; the re-plan must not re-price earlier draws."""
    import threading

    urls = [s.url for s in shards]
    client = make_client(urls, namespace, max_times_sampled=1)
    home = {i: [] for i in range(2)}
    for k in range(200):  # ids whose home shard is known, so that the late inserts all go to shard 1
        gid = f"w:route-{k}"
        home[client._route(gid)[0].index].append(gid)
    client.insert(make_group([0.0, 1.0], group_id=home[0][0]))
    client.insert(make_group([0.0, 1.0], group_id=home[1][0]))
    late = threading.Timer(0.3, lambda: [client.insert(make_group([0.0, 1.0], group_id=g)) for g in home[1][1:4]])
    late.start()
    sampled = client.sample(4, learner_version=0, timeout=5.0)
    late.join()
    weights = [s.weight for s in sampled]
    assert len(sampled) == 4
    assert all(np.isfinite(w) and 0 < w <= 1 for w in weights), weights
    assert all(s.probability > 0 for s in sampled)
