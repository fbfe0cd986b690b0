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
    with pytest.raises(UnknownNameError, match="'gae'.*dr_grpo, grpo, rae, rloo"):
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


def _game_group(rewards_and_roles, env="tictactoe_selfplay"):
    import time

    from buffer import Group, Trajectory

    trajectories = [Trajectory(prompt_ids=[1], completion_ids=[2], loss_mask=[1], behavior_logprobs=[0.0],
                               policy_versions=[0], reward=r, role=role, env_name=env) for r, role in rewards_and_roles]
    return Group("g", "t", "c", time.time(), trajectories)


def test_rae_uses_a_baseline_per_game_and_role_by_hand():
    from learner.advantages import make_estimator

    rae = make_estimator("rae", {"alpha": 0.5})
    group = _game_group([(1.0, "x"), (-1.0, "o"), (1.0, "x"), (-1.0, "o")])
    # x: A = 1 - 0 = 1, b = 0.5 * 0 + 0.5 * 1 = 0.5; then A = 1 - 0.5 = 0.5, b = 0.75 (o mirrors it)
    assert rae(group, first_use=True).tolist() == [1.0, -1.0, 0.5, -0.5]
    assert rae.baselines == {"tictactoe_selfplay/c/x": 0.75, "tictactoe_selfplay/c/o": -0.75}
    # A group trained on again does not move the baselines a second time
    assert rae(group, first_use=False).tolist() == [0.25, -0.25, 0.25, -0.25]
    assert rae.baselines == {"tictactoe_selfplay/c/x": 0.75, "tictactoe_selfplay/c/o": -0.75}
    # Each game has its own baselines; a constant group still has an advantage (it is not group-relative)
    other = rae(_game_group([(0.0, "x"), (0.0, "x")], env="kuhn_poker_selfplay"), first_use=True)
    assert other.tolist() == [0.0, 0.0] and rae.baselines["kuhn_poker_selfplay/c/x"] == 0.0
    restored = make_estimator("rae", {"alpha": 0.5})
    restored.load_state(rae.state())
    assert restored.baselines == rae.baselines


def test_group_relative_estimators_take_no_parameters():
    from learner.advantages import make_estimator

    with pytest.raises(ValueError, match="takes no parameters"):
        make_estimator("grpo", {"alpha": 0.5})
    with pytest.raises(ValueError, match="alpha must be in"):
        make_estimator("rae", {"alpha": 1.0})
    with pytest.raises(ValueError, match="not group-relative"):
        compute_advantages("rae", torch.tensor([1.0, 0.0]))
