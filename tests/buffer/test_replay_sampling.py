"""Sampling against two real redis-server shards: frequencies, probabilities, weights."""

import pickle
from collections import Counter

import numpy as np
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
