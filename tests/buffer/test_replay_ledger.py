"""The consumption ledger: every acknowledged group is buffered or left for a named reason, each
training use is recorded, and a rewind evicts (and later refuses) what a lost timeline made."""

import time

import redis

from buffer import codec


def test_every_way_a_group_leaves_is_counted(shards, namespace, make_client, make_group):
    client = make_client([shards[0].url], namespace, capacity_per_shard=3, max_times_sampled=2, max_staleness=2)
    assert client.insert(make_group([0.0, 1.0], group_id="a"))
    assert not client.insert(make_group([1.0, 1.0], group_id="zero"))  # no learning signal
    for gid in ("b", "c", "d"):  # d pushes a out (capacity 3)
        assert client.insert(make_group([0.0, 1.0], group_id=gid))
    assert not client.insert(make_group([0.0, 1.0], group_id="b"))  # a duplicate is not a new acknowledgement
    drawn = client.sample(4, learner_version=0)
    client.report_trained(0, [(s.group.group_id, 0.5) for s in drawn])  # repeated draws are repeated uses
    client.set_learner_version(5)
    assert not client.insert(make_group([0.0, 1.0], group_id="old", version=1))  # 4 versions behind: stale
    audit = client.audit()
    totals = audit.to_dict()
    assert totals["acked"] == 6  # a, zero, b, c, d, old
    assert (totals["left_zero_signal"], totals["left_capacity"], totals["left_stale"]) == (1, 1, 1)
    assert totals["trained_uses"] == 4 and totals["trained_groups"] == len({s.group.group_id for s in drawn})
    assert totals["left_max_times_sampled"] == sum(1 for g in {s.group.group_id for s in drawn}
                                                  if [d.group.group_id for d in drawn].count(g) >= 2)
    assert totals["acked"] == sum(v for k, v in totals.items() if k.startswith("left_")) + totals["buffered"]
    assert totals["unaccounted"] == 0 and audit.over_trained == 0 and audit.most_times_trained <= 2


def test_a_quarantined_payload_leaves_as_quarantined(shards, namespace, make_client, make_group):
    client = make_client([shards[0].url], namespace)
    client.insert(make_group([0.0, 1.0], group_id="bad"))
    with redis.Redis.from_url(shards[0].url) as conn:
        conn.set(f"{namespace}:p:bad", codec.MAGIC + b"garbage")
    client.insert(make_group([0.0, 1.0], group_id="good"))
    while client.audit().to_dict()["left_quarantined"] == 0:
        client.sample(1, learner_version=0)
    totals = client.audit().to_dict()
    assert (totals["acked"], totals["buffered"], totals["unaccounted"]) == (2, 1, 0)


def test_a_rewind_evicts_and_then_refuses_what_the_lost_timeline_made(shards, namespace, make_client, make_group):
    client = make_client([shards[0].url], namespace, max_staleness=100)
    client.set_learner_version(7)
    for version in (3, 6, 7):
        assert client.insert(make_group([0.0, 1.0], group_id=f"v{version}", version=version))
    assert client.set_learner_version(5, rewind=True) == 2  # v6 and v7 were made after the checkpoint
    assert not client.insert(make_group([0.0, 1.0], group_id="late", version=6))  # still in flight at the restore
    assert client.insert(make_group([0.0, 1.0], group_id="v5", version=5))
    totals = client.audit().to_dict()
    assert (totals["left_rewound"], totals["buffered"], totals["acked"], totals["unaccounted"]) == (3, 2, 5, 0)
    client.set_learner_version(3)  # without rewind the version only grows
    assert client.stats().shards[0].learner_version == 5


def test_training_uses_reported_while_a_shard_is_down_reach_it_once_it_is_back(tmp_path, make_client, make_group):
    from buffer import start_local_shards, stop_local_shards

    [shard] = start_local_shards(1, tmp_path, fsync="always")
    try:
        client = make_client([shard.url], "down-test", retry_down_shard_s=0.1)
        assert client.insert(make_group([0.0, 1.0], group_id="g"))
        [drawn] = client.sample(1, learner_version=0)
        shard.kill()
        assert client.report_trained(0, [("g", 0.5)]) == 0  # the shard is down: the use is kept
        shard.start()
        time.sleep(0.2)
        client.report_trained(1, [])  # the next report delivers it
        totals = client.audit().to_dict()
        assert (totals["trained_uses"], totals["trained_groups"], totals["unaccounted"]) == (1, 1, 0)
        assert client.stats().client.delayed_training_reports == 1
    finally:
        stop_local_shards([shard])
