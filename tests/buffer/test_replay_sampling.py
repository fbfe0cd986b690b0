"""Sampling against two real redis-server shards: frequencies, probabilities, weights."""

import pickle
from collections import Counter

import numpy as np
import redis
import pytest

from buffer import RateLimiterTimeout
from buffer.selectors import SELECTORS

# chi-square critical value at significance 0.001 with 9 degrees of freedom (10 groups), from
# standard tables (scipy.stats.chi2.ppf(0.999, 9) = 27.877); scipy is not in the venv yet.
CHI2_CRITICAL_DF9_P001 = 27.877


def _chi_square(counts: np.ndarray, expected_probabilities: np.ndarray) -> float:
    expected = expected_probabilities * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_frequencies_match_p_alpha_across_shards(shards, namespace, make_client, make_group):
    alpha = 0.7
    client = make_client([s.url for s in shards], namespace, alpha=alpha, initial_priority="producer")
    priorities = {f"g{i}": 0.2 * (i + 1) for i in range(10)}
    for group_id, p in priorities.items():
        assert client.insert(make_group([0.0, 1.0], group_id=group_id, priority=p))
    assert all(s.size > 0 for s in client.stats().shards), "both shards must hold groups"

    counts = Counter()
    for _ in range(200):
        for sampled in client.sample(50, learner_version=0):
            counts[sampled.group.group_id] += 1
    ids = list(priorities)
    observed = np.array([counts[i] for i in ids], dtype=float)
    p = np.array([priorities[i] for i in ids])
    target = p**alpha / (p**alpha).sum()
    assert _chi_square(observed, target) < CHI2_CRITICAL_DF9_P001
    wrong = p / p.sum()  # alpha = 1: the test must be able to tell the difference
    assert _chi_square(observed, wrong) > CHI2_CRITICAL_DF9_P001


def test_probabilities_and_weights_follow_the_formulas(shards, namespace, make_client, make_group):
    client = make_client([s.url for s in shards], namespace, alpha=0.5, beta=0.4, initial_priority="producer")
    priorities = {"a": 1.0, "b": 4.0, "c": 9.0, "d": 0.25}
    for group_id, p in priorities.items():
        client.insert(make_group([0.0, 1.0], group_id=group_id, priority=p))
    leaves = {k: v**0.5 for k, v in priorities.items()}  # 1, 2, 3, 0.5: total 6.5
    batch = client.sample(64, learner_version=0)
    raw = {s.group.group_id: (4 * leaves[s.group.group_id] / 6.5) ** -0.4 for s in batch}
    for sampled in batch:
        group_id = sampled.group.group_id
        assert sampled.probability == pytest.approx(leaves[group_id] / 6.5, rel=1e-9)
        assert sampled.weight == pytest.approx(raw[group_id] / max(raw.values()), rel=1e-9)
        assert sampled.group.priority == priorities[group_id]


@pytest.mark.parametrize("selector", SELECTORS.names())
def test_zero_signal_groups_are_stored_only_where_the_selector_says(shards, namespace, make_client, make_group,
                                                                    selector):
    stores = SELECTORS.get(selector).stores_zero_signal
    assert stores == (selector in ("uniform", "fifo"))
    client = make_client([s.url for s in shards], namespace, selector=selector)
    flat = make_group([1.0, 1.0, 1.0])  # zero variance: learning signal exactly 0
    assert client.insert(flat) == stores
    kept = make_group([0.0, 1.0])
    assert client.insert(kept)
    assert client.stats().to_dict()["replay/zero_signal_skips"] == (0 if stores else 1)
    drawn = {s.group.group_id for s in client.sample(20, learner_version=0)}
    assert drawn == ({flat.group_id, kept.group_id} if stores else {kept.group_id})


def test_priority_update_to_zero_stops_sampling(shards, namespace, make_client, make_group):
    client = make_client([s.url for s in shards], namespace)
    first, second = make_group([0.0, 1.0]), make_group([0.0, 1.0])
    client.insert(first)
    client.insert(second)
    assert client.report_trained(0, [(first.group_id, 0.0), ("unknown:1", 3.0)]) == 1
    assert {s.group.group_id for s in client.sample(20, learner_version=0)} == {second.group_id}
    client.report_trained(0, [(second.group_id, 0.0)])
    with pytest.raises(RateLimiterTimeout, match="got 0"):
        client.sample(1, learner_version=0, timeout=0.2)


def test_alpha_zero_is_uniform_over_positive_priorities(shards, namespace, make_client, make_group):
    client = make_client([s.url for s in shards], namespace, alpha=0.0, initial_priority="producer")
    for p in (0.1, 5.0, 50.0):
        client.insert(make_group([0.0, 1.0], priority=p))
    assert {round(s.probability, 12) for s in client.sample(30, learner_version=0)} == {round(1 / 3, 12)}


def test_uniform_selector_ignores_priority(shards, namespace, make_client, make_group):
    client = make_client([s.url for s in shards], namespace, selector="uniform", initial_priority="producer")
    for p in (0.0, 1.0, 100.0, 3.0):
        client.insert(make_group([0.0, 1.0], priority=p))
    batch = client.sample(40, learner_version=0)
    assert all(s.probability == pytest.approx(0.25) and s.weight == pytest.approx(1.0) for s in batch)
    assert len({s.group.group_id for s in batch}) == 4  # 40 draws miss one of 4 with prob. 4 * 0.75^40


def test_fifo_selector_returns_the_oldest(shards, namespace, make_client, make_group):
    client = make_client([shards[0].url], namespace, selector="fifo", max_times_sampled=1)
    groups = [make_group([0.0, 1.0]) for _ in range(5)]
    for group in groups:
        client.insert(group)
    assert [s.group.group_id for s in client.sample(2, learner_version=0)] == [g.group_id for g in groups[:2]]
    assert [s.group.group_id for s in client.sample(3, learner_version=0)] == [g.group_id for g in groups[2:]]


def test_lifo_selector_returns_the_newest(shards, namespace, make_client, make_group):
    client = make_client([shards[0].url], namespace, selector="lifo", max_times_sampled=1)
    groups = [make_group([0.0, 1.0]) for _ in range(5)]
    for group in groups:
        client.insert(group)
    assert [s.group.group_id for s in client.sample(2, learner_version=0)] == [g.group_id for g in groups[:2:-1]]
    client.insert(newest := make_group([0.0, 1.0]))
    assert [s.group.group_id for s in client.sample(2, learner_version=0)] == [newest.group_id, groups[2].group_id]


def test_duplicate_insert_and_pickled_client(shards, namespace, make_client, make_group):
    client = make_client([s.url for s in shards], namespace)
    group = make_group([0.0, 1.0])
    assert client.insert(group) is True
    assert client.insert(group) is False
    client.sample(1, learner_version=0)  # the client has live connections now
    copy = pickle.loads(pickle.dumps(client))
    assert copy.insert(group) is False
    assert copy.stats().total("size") == 1
    copy.close()


@pytest.mark.parametrize("remover", ["fifo", "lowest_priority"])
def test_the_sum_tree_holds_each_groups_p_alpha_after_batched_inserts_evictions_and_updates(
        shards, namespace, make_client, make_group, remover):
    """Every node of a shard's sum tree equals the sum of its children, and the leaves hold p^alpha of
    the stored groups (0 where a slot is free), after one insert script stores and evicts many
    groups (freed slots reused within the batch) and one trained call updates many leaves."""
    alpha, capacity = 0.5, 6
    client = make_client([shards[0].url], namespace, alpha=alpha, initial_priority="producer",
                         capacity_per_shard=capacity, remover=remover)
    priorities = {f"g{i}": float(i % 5 + 1) for i in range(11)}
    assert all(client.insert_many([make_group([0.0, 1.0], group_id=g, priority=p) for g, p in priorities.items()]))
    stored = _tree_leaves(shards[0].url, namespace)
    assert len(stored) == capacity
    if remover == "fifo":
        assert list(stored) == [f"g{i}" for i in range(5, 11)]
    priorities.update({g: priorities[g] * 4 for g in list(stored)[:3]})
    client.report_trained(1, [(g, priorities[g]) for g in list(stored)[:3]])
    assert _tree_leaves(shards[0].url, namespace) == {g: pytest.approx(priorities[g] ** alpha, rel=1e-12) for g in stored}


def _tree_leaves(url: str, namespace: str) -> dict[str, float]:
    """Group id -> its leaf value, in insertion order, after checking every node of the tree against
    its children and every free leaf for 0."""
    with redis.Redis.from_url(url) as conn:
        base = int(conn.hget(f"{namespace}:config", "base"))
        tree = {int(k): float(v) for k, v in conn.hgetall(f"{namespace}:tree").items()}
        slots = {int(k): v.decode() for k, v in conn.hgetall(f"{namespace}:slots").items()}
        order = [g.decode() for g in conn.zrange(f"{namespace}:fifo", 0, -1)]
    for node in range(1, base):
        assert tree.get(node, 0.0) == pytest.approx(tree.get(2 * node, 0.0) + tree.get(2 * node + 1, 0.0), rel=1e-12)
    assert all(tree.get(base + slot, 0.0) == 0.0 for slot in range(base) if slot not in slots)
    leaves = {gid: tree[base + slot] for slot, gid in slots.items()}
    return {gid: leaves[gid] for gid in order}


def test_a_rewind_that_evicts_thousands_of_groups_leaves_an_empty_tree(shards, namespace, make_client, make_group):
    """One script changes thousands of leaves (Lua's unpack() takes about 8000 values: the tree's
    reads and writes go in chunks), and the shard samples and stores normally afterwards."""
    client = make_client([shards[0].url], namespace, capacity_per_shard=5000, max_staleness=100,
                         initial_priority="producer")
    client.set_learner_version(7)
    groups = [make_group([0.0, 1.0], group_id=f"t:{i}", version=7, tokens=2) for i in range(4500)]
    for start in range(0, len(groups), 500):
        assert all(client.insert_many(groups[start:start + 500]))
    assert client.set_learner_version(5, rewind=True) == 4500  # one script: every leaf set to 0
    assert _tree_leaves(shards[0].url, namespace) == {}
    assert client.insert(make_group([0.0, 1.0], group_id="after", version=5))
    assert [s.group.group_id for s in client.sample(3, learner_version=5)] == ["after"] * 3
