"""build_batch layout and micro-batch packing, checked by hand on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from buffer import Group, SampledGroup, Trajectory
from learner.batch import build_batch

PAD = 0


def _trajectory(prompt, completion, mask, behavior, versions, reward=0.0) -> Trajectory:
    return Trajectory(prompt_ids=np.array(prompt), completion_ids=np.array(completion), loss_mask=np.array(mask),
                      behavior_logprobs=np.array(behavior), policy_versions=np.array(versions), reward=reward)


def _sampled(trajectories, group_id="w:0") -> SampledGroup:
    return SampledGroup(group=Group(group_id, "t", "c", 0.0, trajectories), probability=1.0, weight=1.0,
                        times_sampled=1, shard=0)


def test_build_batch_places_completion_token_j_at_target_position_p_minus_1_plus_j():
    # Row 0: prompt [5, 6], completion [7, 8, 9] where 8 is an environment token (mask 0).
    # Row 1: prompt [4], completion [3].
    first = _trajectory([5, 6], [7, 8, 9], [1, 0, 1], [-0.1, 0.0, -0.3], [2, -1, 3])
    second = _trajectory([4], [3], [1], [-0.7], [5])
    batch = build_batch([_sampled([first, second])], [np.array([1.5, -2.0])], pad_id=PAD)

    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [4, 3, PAD, PAD, PAD]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.lengths.tolist() == [5, 2]
    # Targets are input_ids[:, 1:] = [[6, 7, 8, 9], [3, pad, pad, pad]]: with P = 2, completion
    # token j sits at target position 1 + j (positions 1, 2, 3); with P = 1, at position j.
    assert batch.loss_mask.tolist() == [[0, 1, 0, 1], [1, 0, 0, 0]]
    assert batch.behavior_logprobs.tolist() == pytest.approx(np.array([[0, -0.1, 0, -0.3], [-0.7, 0, 0, 0]]))
    assert batch.policy_versions.tolist() == [[-1, 2, -1, 3], [5, -1, -1, -1]]
    assert batch.advantages.tolist() == [[0, 1.5, 0, 1.5], [-2.0, 0, 0, 0]]
    assert batch.num_loss_tokens == 3
    # Every masked target is the completion token it stands for.
    targets = batch.input_ids[:, 1:]
    assert targets[batch.loss_mask.bool()].tolist() == [7, 9, 3]


def test_build_batch_concatenates_groups_in_order_and_checks_advantage_count():
    groups = [_sampled([_trajectory([1], [2], [1], [-1.0], [0])], "w:0"),
              _sampled([_trajectory([1, 1], [3, 3], [1, 1], [-1.0, -1.0], [0, 0])] * 2, "w:1")]
    batch = build_batch(groups, [np.array([0.5]), np.array([1.0, -1.0])], pad_id=PAD)
    assert batch.advantages[:, :1].squeeze(1).tolist() == [0.5, 0.0, 0.0]
    assert batch.advantages[1:, 1].tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match="2 advantages for 3 trajectories"):
        build_batch(groups, [np.array([0.5]), np.array([1.0])], pad_id=PAD)


def test_build_batch_rejects_an_empty_prompt():
    with pytest.raises(ValueError, match="empty prompt"):
        build_batch([_sampled([_trajectory([], [2], [1], [-1.0], [0])])], [np.array([1.0])], pad_id=PAD)


def _batch_of_lengths(lengths: list[int]):
    """One trajectory per length (prompt of 1 token), completion tokens numbered by row."""
    trajectories = [_trajectory([1], [10 + row] * (n - 1), [1] * (n - 1), [-0.5] * (n - 1), [0] * (n - 1))
                    for row, n in enumerate(lengths)]
    advantages = np.arange(len(lengths), dtype=np.float32) + 1.0  # row r has advantage r + 1
    return build_batch([_sampled(trajectories)], [advantages], pad_id=PAD)


def test_micro_batches_pack_longest_first_within_the_budget():
    batch = _batch_of_lengths([3, 8, 5, 2, 7, 4])
    packed = batch.micro_batches(token_budget=16)
    # Sorted by length: 8, 7, 5, 4, 3, 2. Greedy: [8, 7] (2 x 8 = 16); 5 would make 3 x 8 = 24, so
    # [5, 4, 3] (3 x 5 = 15); 2 would make 4 x 5 = 20 > 16, so [2] alone.
    assert [mb.lengths.tolist() for mb in packed] == [[8, 7], [5, 4, 3], [2]]
    assert [tuple(mb.input_ids.shape) for mb in packed] == [(2, 8), (3, 5), (1, 2)]
    for mb in packed:
        assert mb.num_rows * mb.input_ids.shape[1] <= 16
        assert mb.loss_mask.shape[1] == mb.input_ids.shape[1] - 1
    # Every row exactly once, with its own tokens and advantage (row r: token 10 + r, advantage r + 1).
    rows = [(int(mb.input_ids[i, 1]), float(mb.advantages[i, 0])) for mb in packed for i in range(mb.num_rows)]
    assert sorted(rows) == [(10 + r, r + 1.0) for r in range(6)]
    assert sum(mb.num_loss_tokens for mb in packed) == batch.num_loss_tokens


def test_a_row_longer_than_the_budget_gets_a_micro_batch_of_its_own():
    batch = _batch_of_lengths([3, 12, 2])
    packed = batch.micro_batches(token_budget=8)
    assert [mb.lengths.tolist() for mb in packed] == [[12], [3, 2]]
    assert torch.equal(packed[0].input_ids[0], batch.input_ids[1])


def test_micro_batches_match_a_reference_greedy_packing_on_random_lengths():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(2, 20, size=int(rng.integers(1, 40))).tolist()  # with ties
        budget = int(rng.integers(16, 120))
        expected, current = [], []  # greedy over rows sorted longest first, width = the longest so far
        for n in sorted(lengths, reverse=True):
            if current and (len(current) + 1) * max(current + [n]) > budget:
                expected.append(current)
                current = []
            current.append(n)
        expected.append(current)
        packed = _batch_of_lengths(lengths).micro_batches(token_budget=budget)
        assert [mb.lengths.tolist() for mb in packed] == expected
