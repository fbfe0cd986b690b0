"""Reverb rate limiter rules under concurrency, and timeouts that say what blocked."""

import threading

import pytest

from buffer import RateLimiterTimeout
from buffer.rate_limiters import MinSize, Queue, SampleToInsertRatio


def test_ratio_holds_with_three_producers_and_two_consumers(shards, namespace, make_client, make_group):
    limiter = SampleToInsertRatio(samples_per_insert=2.0, min_size_to_sample=2, error_buffer=6.0)
    _, _, min_diff, max_diff = limiter.params()  # 4 - 6 = -2, 4 + 6 = 10
    urls = [s.url for s in shards]
    monitor = make_client(urls, namespace, rate_limiter=limiter)
    stop, errors, diffs = threading.Event(), [], []

    def produce(worker: int) -> None:
        client = make_client(urls, namespace, rate_limiter=limiter)
        try:
            for i in range(30):
                client.insert(make_group([0.0, 1.0], group_id=f"p{worker}:{i}"), timeout=10.0)
        except RateLimiterTimeout as e:  # surfaced below: a producer must never starve here
            errors.append(e)

    def consume() -> None:
        client = make_client(urls, namespace, rate_limiter=limiter)
        while not stop.is_set():
            try:
                client.sample(3, learner_version=0, timeout=0.2)
            except RateLimiterTimeout:
                pass  # producers are behind: the limiter holds us back

    def watch() -> None:
        while not stop.is_set():
            diffs.extend(s.inserts * 2.0 - s.samples for s in monitor.stats().shards)

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(3)]
    helpers = [threading.Thread(target=consume) for _ in range(2)] + [threading.Thread(target=watch)]
    for thread in threads + helpers:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    stop.set()
    for thread in helpers:
        thread.join(timeout=10)
    assert not errors
    final = monitor.stats().shards
    assert sum(s.inserts for s in final) == 90
    assert len(diffs) > 10
    assert all(min_diff <= d <= max_diff for d in diffs), (min(diffs), max(diffs))
    for shard in final:  # the consumers kept each shard's ratio inside its error buffer
        assert min_diff <= shard.inserts * 2.0 - shard.samples <= max_diff
        assert shard.samples >= 2.0 * shard.inserts - max_diff > 0


def test_blocked_insert_times_out_naming_shard_and_state(shards, namespace, make_client, make_group):
    client = make_client([shards[0].url], namespace, rate_limiter=Queue(size=2), selector="fifo")
    assert client.insert(make_group([0.0, 1.0]))
    assert client.insert(make_group([0.0, 1.0]))
    with pytest.raises(RateLimiterTimeout, match=r"shard 0 \(127\.0\.0\.1:\d+\).*inserts=2 samples=0 size=2"):
        client.insert(make_group([0.0, 1.0]), timeout=0.2)
    client.sample(1, learner_version=0)  # a sample makes room in the queue
    assert client.insert(make_group([0.0, 1.0]), timeout=0.2)


def test_blocked_sample_times_out_naming_the_limiter(shards, namespace, make_client, make_group):
    client = make_client([shards[0].url], namespace, rate_limiter=MinSize(min_size=3))
    client.insert(make_group([0.0, 1.0]))
    with pytest.raises(RateLimiterTimeout, match=r"min_size=3.*blocked by the rate limiter, inserts=1 samples=0"):
        client.sample(1, learner_version=0, timeout=0.2)
    client.insert(make_group([0.0, 1.0]))
    client.insert(make_group([0.0, 1.0]))
    assert len(client.sample(4, learner_version=0, timeout=1.0)) == 4


def test_a_learner_held_by_one_shard_samples_from_another_that_has_room(shards, namespace, make_client, make_group):
    """Limiters are per shard: a learner waiting on shard 0's limiter, while shard 1's would let it
    draw, waited until it timed out (and a producer blocked on shard 1 for want of samples waited with
    it), though the table as a whole had room. Draws a limiter holds go to shards that allow them."""
    urls = [s.url for s in shards]
    client = make_client(urls, namespace, initial_priority="producer",
                         rate_limiter=SampleToInsertRatio(samples_per_insert=1, min_size_to_sample=1, error_buffer=2))

    def homed(shard: int, priority: float):
        while (group := make_group([0.0, 1.0], priority=priority)) and client._home(group.group_id) != shard:
            pass
        return group

    client.insert(homed(0, 10.0))  # all but 1e-5 of the mass: every draw is planned on shard 0, which allows 2
    client.insert(homed(1, 1e-6))
    sampled = client.sample(3, learner_version=0, timeout=2.0)
    assert len(sampled) == 3 and {s.shard for s in sampled} == {0, 1}
