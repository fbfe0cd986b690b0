"""ARPO success store: an all-failed group gets a stored success before it is inserted."""

import numpy as np
import pytest
import redis

from buffer import SuccessStoreConfig


def test_all_failed_group_gets_a_stored_success(shards, namespace, make_client, make_group):
    client = make_client([s.url for s in shards], namespace,
                         success_store=SuccessStoreConfig(enabled=True, per_task=2))
    client.insert(make_group([0.0, 1.0, 0.0, 0.5], task_id="t1"))  # stores the 1.0 and 0.5 successes
    failed = make_group([0.0, 0.0, 0.1, 0.0], task_id="t1")  # std 0.043 < 0.05, mean 0.025 < 0.2
    assert client.insert(failed)  # zero-signal without injection? no: the injection gives it a signal
    batch = client.sample(20, learner_version=0)
    patched = next(s.group for s in batch if s.group.group_id == failed.group_id)
    rewards = patched.rewards
    # the newest stored success (0.5, pushed last) replaced the lowest-reward rollout (index 0)
    np.testing.assert_array_equal(rewards, [0.5, 0.0, 0.1, 0.0])
    # recomputed initial priority, mean |r - mean r|: mean 0.15, |0.35| + |0.15| + |0.05| + |0.15| = 0.7, / 4
    assert patched.priority == pytest.approx(0.175)
    assert client.stats().client.success_injections == 1


def test_store_keeps_k_per_task_and_skips_unknown_tasks(shards, namespace, make_client, make_group):
    client = make_client([s.url for s in shards], namespace,
                         success_store=SuccessStoreConfig(enabled=True, per_task=2))
    for i in range(3):
        client.insert(make_group([0.0, 0.2 + 0.1 * i], task_id="t2"))
    lengths = [redis.Redis.from_url(s.url).llen(f"{namespace}:success:t2") for s in shards]
    assert sorted(lengths) == [0, 2]  # on the task's home shard, the newest 2 of 3
    assert not client.insert(make_group([0.0, 0.0], task_id="t3"))  # nothing stored for t3: stays zero-signal
    assert client.stats().client.success_injections == 0


def test_success_store_is_off_by_default(shards, namespace, make_client, make_group):
    client = make_client([s.url for s in shards], namespace)
    client.insert(make_group([0.0, 1.0], task_id="t4"))
    assert not client.insert(make_group([0.0, 0.0], task_id="t4"))
    assert client.stats().client.success_injections == 0
