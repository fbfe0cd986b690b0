import math

import pytest
import torch

from envs.registry import UnknownNameError
from learner.advantages import ADVANTAGES, compute_advantages, register_advantage


def test_grpo_uses_population_std():
    # mean 2, population std sqrt(2/3) (the sample std would be 1 and give [-1, 0, 1])
    std = math.sqrt(2 / 3)
    expected = [-1 / (std + 1e-6), 0.0, 1 / (std + 1e-6)]
    got = compute_advantages("grpo", torch.tensor([1.0, 2.0, 3.0]))
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_grpo_binary_rewards():
    got = compute_advantages("grpo", torch.tensor([1.0, 0.0, 0.0, 1.0]))
    a = 0.5 / (0.5 + 1e-6)
    assert got.tolist() == pytest.approx([a, -a, -a, a], rel=1e-6)


def test_dr_grpo_only_centres():
    got = compute_advantages("dr_grpo", torch.tensor([1.0, 2.0, 6.0]))
    assert got.tolist() == pytest.approx([-2.0, -1.0, 3.0])


def test_rloo_leave_one_out_baseline():
    # baselines: (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    got = compute_advantages("rloo", torch.tensor([1.0, 2.0, 6.0]))
    assert got.tolist() == pytest.approx([-3.0, -1.5, 4.5])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_zero_variance_group_is_exactly_zero(name):
    got = compute_advantages(name, torch.full((7,), 0.1))
    assert torch.equal(got, torch.zeros(7))


def test_stacked_groups_are_independent():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.5, 0.5, 0.5]])
    got = compute_advantages("dr_grpo", rewards)
    assert torch.equal(got, torch.tensor([[-2.0, -1.0, 3.0], [0.0, 0.0, 0.0]]))


def test_integer_rewards_are_accepted():
    assert compute_advantages("dr_grpo", torch.tensor([0, 1])).tolist() == pytest.approx([-0.5, 0.5])


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownNameError, match="'gae'.*dr_grpo, grpo, rloo"):
        compute_advantages("gae", torch.tensor([1.0, 2.0]))


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        compute_advantages("rloo", torch.tensor([1.0]))


def test_register_custom_estimator_and_reject_duplicates():
    name = "test_sign"
    if name not in ADVANTAGES.names():
        register_advantage(name)(lambda r: torch.sign(r - r.mean()))
    assert compute_advantages(name, torch.tensor([0.0, 3.0])).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(lambda r: r)
