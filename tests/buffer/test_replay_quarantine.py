"""A payload that fails to decode is quarantined and counted; sampling goes on with the rest."""

import redis


def test_bad_payload_is_quarantined_and_sampling_continues(shards, namespace, make_client, make_group,
                                                          stored_ids):
    client = make_client([shards[0].url], namespace)
    good = [make_group([0.0, 1.0]) for _ in range(3)]
    bad = make_group([0.0, 1.0])
    for group in good + [bad]:
        client.insert(group)
    with redis.Redis.from_url(shards[0].url) as conn:
        conn.setrange(f"{namespace}:p:{bad.group_id}", 40, b"\xff\xfe\xfd")  # bit rot in the arrays

    drawn = [s.group.group_id for _ in range(10) for s in client.sample(10, learner_version=0)]
    assert len(drawn) == 100 and bad.group_id not in drawn
    assert set(drawn) == {g.group_id for g in good}
    assert bad.group_id not in stored_ids(shards[0].url, namespace)
    shard = client.stats().shards[0]
    assert (shard.quarantined, shard.evictions["quarantined"], shard.size) == (1, 1, 3)
    with redis.Redis.from_url(shards[0].url) as conn:
        assert conn.lrange(f"{namespace}:quarantine", 0, -1) == [bad.group_id.encode()]
        assert conn.exists(f"{namespace}:q:{bad.group_id}")  # kept for inspection


def test_a_group_whose_payload_is_gone_is_quarantined_not_drawn_forever(shards, namespace, make_client,
                                                                        make_group, stored_ids):
    """A payload lost while its group stays indexed (data loss, a maxmemory policy) came back as
    nothing on every draw: sample() spun past its timeout, calling the shard thousands of times."""
    client = make_client([shards[0].url], namespace)
    lost, kept = make_group([0.0, 1.0]), make_group([0.0, 1.0])
    client.insert_many([lost, kept])
    with redis.Redis.from_url(shards[0].url) as conn:
        conn.delete(f"{namespace}:p:{lost.group_id}")
    drawn = [s.group.group_id for s in client.sample(20, learner_version=0, timeout=5.0)]
    assert set(drawn) == {kept.group_id}
    assert stored_ids(shards[0].url, namespace) == [kept.group_id]
    assert client.stats().shards[0].quarantined == 1


def test_a_group_quarantined_twice_is_counted_once(shards, namespace, make_client, make_group):
    """Two learner ranks can draw the same bad group: the second quarantine finds it gone."""
    client = make_client([shards[0].url], namespace)
    bad = make_group([0.0, 1.0])
    client.insert(bad)
    shard = client._shards[0]
    assert shard.quarantine(bad.group_id, b"bad", 60) and not shard.quarantine(bad.group_id, b"bad", 60)
    stats = client.stats().shards[0]
    assert (stats.quarantined, stats.evictions["quarantined"], stats.ledger["left_quarantined"]) == (1, 1, 1)
