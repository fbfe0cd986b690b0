"""SPEAR self-imitation buffer, weight schedule and loss, against values worked by hand."""

import math

import numpy as np
import pytest
import torch

from buffer.schema import Trajectory
from learner.loss_config import ClipCovConfig, SelfImitationConfig
from learner.losses import LossInputs, compute_normalizers
from learner.self_imitation import SelfImitationBuffer, imitation_weight, self_imitation_loss


def trajectory(reward: float, length: int = 3) -> Trajectory:
    return Trajectory(
        prompt_ids=np.arange(2),
        completion_ids=np.arange(length),
        loss_mask=np.ones(length),
        behavior_logprobs=np.full(length, -1.0),
        policy_versions=np.zeros(length),
        reward=reward,
    )


def test_add_keeps_only_positive_advantages_and_capacity_drops_oldest():
    buffer = SelfImitationBuffer(SelfImitationConfig(capacity=3))
    kept = buffer.add([trajectory(r) for r in (1.0, 0.0, 0.5, 0.2)], [0.8, -0.5, 0.0, 0.1], policy_version=0)
    assert kept == 2 and len(buffer) == 2
    buffer.add([trajectory(0.9), trajectory(0.7)], [0.3, 0.4], policy_version=1)
    rewards = [entry.trajectory.reward for entry in buffer.refresh(current_version=1)]
    assert rewards == [0.2, 0.9, 0.7]  # the first (reward 1.0) was dropped to stay at 3


def test_add_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 trajectories but 1 advantages"):
        SelfImitationBuffer(SelfImitationConfig()).add([trajectory(1.0)] * 2, [1.0], policy_version=0)


def test_refresh_drops_stale_entries():
    buffer = SelfImitationBuffer(SelfImitationConfig(max_staleness=10))
    buffer.add([trajectory(1.0)], [1.0], policy_version=0)
    buffer.add([trajectory(2.0)], [1.0], policy_version=5)
    assert [e.policy_version for e in buffer.refresh(current_version=10)] == [0, 5]  # age 10 is allowed
    assert [e.policy_version for e in buffer.refresh(current_version=11)] == [5]
    assert len(buffer) == 1


def test_advantage_recalibrated_against_median_of_recent_group_means():
    buffer = SelfImitationBuffer(SelfImitationConfig(baseline_groups=3))
    buffer.add([trajectory(r) for r in (0.9, 0.5, 0.3)], [1.0, 1.0, 1.0], policy_version=0)
    # group means 0.0 (dropped: only the last 3 count), 0.2, 0.4, 0.6 -> median 0.4
    buffer.observe_groups([[0.0, 0.0], [0.0, 0.4], [0.4, 0.4], [1.0, 0.2]])
    assert buffer.baseline() == pytest.approx(0.4)
    entries = buffer.refresh(current_version=0)
    assert [e.trajectory.reward for e in entries] == [0.9, 0.5]  # 0.3 - 0.4 < 0 is dropped
    assert [e.advantage for e in entries] == pytest.approx([0.5, 0.1])
    assert len(buffer) == 2


def test_without_history_the_estimator_advantage_is_kept():
    buffer = SelfImitationBuffer(SelfImitationConfig())
    buffer.add([trajectory(0.1)], [0.7], policy_version=0)
    assert buffer.refresh(current_version=0)[0].advantage == 0.7


def test_sample_is_without_replacement_and_seeded():
    buffer = SelfImitationBuffer(SelfImitationConfig())
    buffer.add([trajectory(float(r)) for r in range(1, 11)], [1.0] * 10, policy_version=0)
    first = buffer.sample(4, current_version=0, rng=np.random.default_rng(7))
    again = buffer.sample(4, current_version=0, rng=np.random.default_rng(7))
    rewards = [e.trajectory.reward for e in first]
    assert len(set(rewards)) == 4 and rewards == [e.trajectory.reward for e in again]
    assert len(buffer.sample(50, current_version=0, rng=np.random.default_rng(0))) == 10
    assert buffer.sample(3, current_version=100, rng=np.random.default_rng(0)) == []  # all stale


def test_weight_schedule_is_a_half_cosine_ramp():
    cfg = SelfImitationConfig(coef=0.5, warmup_steps=200)
    assert imitation_weight(0, cfg) == 0.0
    assert imitation_weight(50, cfg) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)) / 2)
    assert imitation_weight(100, cfg) == pytest.approx(0.25)
    assert imitation_weight(199, cfg) == pytest.approx(0.5 * (1 - math.cos(math.pi * 199 / 200)) / 2)
    assert imitation_weight(200, cfg) == 0.5
    assert imitation_weight(5000, cfg) == 0.5
    assert imitation_weight(0, SelfImitationConfig(coef=0.3, warmup_steps=0)) == 0.3


def test_loss_is_weighted_clipped_loss_with_clip_cov():
    logp = torch.tensor([[0.0, -4.0, 0.0, -4.0]], dtype=torch.float64, requires_grad=True)
    ratios = torch.tensor([[1.0, 1.0, 1.0, 1.5]], dtype=torch.float64)
    inputs = LossInputs(
        logprobs=logp,
        behavior_logprobs=logp.detach() - ratios.log(),
        advantages=torch.tensor([[2.0, 2.0, -2.0, -2.0]], dtype=torch.float64),
        mask=torch.ones(1, 4, dtype=torch.float64),
    )
    norm = compute_normalizers([inputs.mask])
    cfg = SelfImitationConfig(coef=2.0, warmup_steps=200)
    loss, metrics = self_imitation_loss(inputs, norm, step=100, cfg=cfg, generator=torch.Generator().manual_seed(0))
    # weight 1.0 at t = 100; per token -min(rA, clip(r)A): -2, -2, 2, 3 (r = 1.5 > 1.28 is unclipped for A < 0)
    assert loss.item() == pytest.approx((-2.0 - 2.0 + 2.0 + 3.0) / 4)
    # Cov = [4, -4, -4, 4]: Clip-Cov (on by default here) stops exactly one of tokens 0 and 3
    (grad,) = torch.autograd.grad(loss, logp)
    unclipped_grad = [-2.0 / 4, -2.0 / 4, 2.0 / 4, 3.0 / 4]
    zeroed = [i for i, g in enumerate(grad[0].tolist()) if g == 0.0]
    assert len(zeroed) == 1 and zeroed[0] in (0, 3)
    assert [g for i, g in enumerate(grad[0].tolist()) if i != zeroed[0]] == pytest.approx(
        [g for i, g in enumerate(unclipped_grad) if i != zeroed[0]]
    )
    assert metrics["self_imitation/clip_cov_frac"] == pytest.approx(1 / 4)
    # without Clip-Cov it is the plain policy loss scaled by the weight
    plain_cfg = SelfImitationConfig(coef=2.0, clip_cov=None)
    plain, _ = self_imitation_loss(inputs, norm, step=50, cfg=plain_cfg)
    # weight 2.0 * (1 - cos(pi * 50 / 200)) / 2 = 1 - sqrt(1/2) = 0.29289, times the token mean 1/4 above
    assert plain.item() == pytest.approx(0.0732233, abs=1e-7)


def test_default_config_uses_clip_cov():
    assert SelfImitationConfig().policy_loss_config().clip_cov == ClipCovConfig()
