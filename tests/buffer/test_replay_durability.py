"""SIGKILL a shard in the middle of inserts (AOF with fsync always, AUTH on), then restart it."""

import threading
import time

import pytest
import redis

from buffer import start_local_shards, stop_local_shards

PASSWORD = "test-only-password"


@pytest.fixture
def durable_shards(tmp_path):
    started = start_local_shards(2, tmp_path, fsync="always", password=PASSWORD)
    yield started
    stop_local_shards(started)


def _stored_priority(url: str, namespace: str, group_id: str) -> float | None:
    with redis.Redis.from_url(url, password=PASSWORD) as conn:
        value = conn.hget(f"{namespace}:m:{group_id}", "p")
    return None if value is None else float(value)


def test_acknowledged_inserts_survive_sigkill(durable_shards, namespace, make_client, make_group):
    urls = [s.url for s in durable_shards]
    client = make_client(urls, namespace, initial_priority="producer", password=PASSWORD, retry_down_shard_s=0.2)
    acked: dict[str, float] = {}
    sampled_shards_while_down: list[int] = []

    def produce() -> None:
        for i in range(300):
            group = make_group([0.0, 1.0], group_id=f"w0:{i}", priority=0.01 * (i + 1))
            if client.insert(group):
                acked[group.group_id] = group.priority

    producer = threading.Thread(target=produce)
    producer.start()
    while len(acked) < 100:
        time.sleep(0.001)
    durable_shards[0].kill()  # from this thread: an insert may be in flight
    while producer.is_alive():  # the learner keeps sampling from the surviving shard
        sampled_shards_while_down += [s.shard for s in client.sample(4, learner_version=0)]
    producer.join()

    assert len(acked) == 300, "inserts must go on while a shard is down"
    assert sampled_shards_while_down and set(sampled_shards_while_down) == {1}
    stats = client.stats()
    assert not stats.shards[0].up and stats.client.rerouted_inserts > 0 and stats.client.shard_down_events == 1
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(urls[0], password=PASSWORD).ping()

    durable_shards[0].start()  # same port and directory: the AOF is replayed
    time.sleep(0.3)  # past retry_down_shard_s: the client tries the shard again
    for group_id, priority in acked.items():
        found = [p for p in (_stored_priority(u, namespace, group_id) for u in urls) if p is not None]
        assert found and found[0] == pytest.approx(priority), group_id
    after = client.stats()
    assert all(s.up for s in after.shards)
    assert after.total("size") >= 300
    assert after.shards[0].inserts == after.shards[0].size > 0  # counters came back with the data
    assert 0 in {s.shard for s in client.sample(64, learner_version=0)}  # reconnected
