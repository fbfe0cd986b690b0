"""BAPO adaptive clipping bounds against hand-worked loops (ALGORITHMS.md, "BAPO")."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from learner.loss_config import BAPOConfig
from learner.losses import bapo_bounds, bapo_contribution_sums, bapo_ladder, select_bounds

DEFAULT = BAPOConfig()


def tokens(rows):
    """rows of (ratio, advantage, pi_beh) -> the four tensors bapo_bounds takes (all masked in)."""
    ratio, adv, prob = (torch.tensor(column, dtype=torch.float64) for column in zip(*rows))
    return ratio, adv, torch.ones_like(ratio), torch.log(prob)


def test_ladder_raises_c_high_first_then_c_low():
    ladder = bapo_ladder(DEFAULT)
    assert ladder[0] == (0.6, 1.2)
    assert ladder[1] == (0.6, 1.25)
    assert ladder[36] == (0.6, 3.0)  # (3.0 - 1.2) / 0.05 = 36 steps of c_high
    assert ladder[37] == (0.62, 3.0)
    assert ladder[-1] == (0.9, 3.0)  # then (0.9 - 0.6) / 0.02 = 15 steps of c_low
    assert len(ladder) == 1 + 36 + 15


def test_ladder_without_room_for_c_low_never_steps():
    # the loop's guard is c_low + d2 <= b_minus, checked even while c_high moves
    assert bapo_ladder(BAPOConfig(a_minus=0.9, b_minus=0.9)) == [(0.9, 1.2)]


def test_target_already_met_keeps_initial_bounds():
    # pos 1 * 1 * 0.5 = 0.5, neg 1 * 1 * 0.5 = 0.5: rho = 0.5 >= 0.4
    c_low, c_high, rho = bapo_bounds(*tokens([(1.0, 1.0, 0.5), (1.0, -1.0, 0.5)]), DEFAULT)
    assert (c_low, c_high, rho) == pytest.approx((0.6, 1.2, 0.5))


def test_only_c_high_moves():
    # pos r=1.32 (mass 0.5 * 1.32 = 0.66, clipped while c_high < 1.32), pos r=1 (0.1), neg r=1 (0.5)
    # c_high 1.2, 1.25, 1.30: rho = 0.1 / 0.6; at 1.35: (0.1 + 0.66) / (0.1 + 0.66 + 0.5) = 0.603
    rows = [(1.32, 1.0, 0.5), (1.0, 1.0, 0.1), (1.0, -1.0, 0.5)]
    c_low, c_high, rho = bapo_bounds(*tokens(rows), DEFAULT)
    assert (c_low, c_high) == pytest.approx((0.6, 1.35))
    assert rho == pytest.approx(0.76 / 1.26)


def test_c_high_saturates_then_c_low_moves():
    # pos r=1 A=1 p=0.2: 0.2.  neg r=0.69 A=-1 p=0.5: 0.345 (kept while c_low <= 0.69).  neg r=1 p=0.1: 0.1
    # rho = 0.2 / 0.645 = 0.31 for every c_high; c_low 0.62 ... 0.68 too; at 0.70 the 0.69 token is
    # clipped: rho = 0.2 / 0.3 = 0.667
    rows = [(1.0, 1.0, 0.2), (0.69, -1.0, 0.5), (1.0, -1.0, 0.1)]
    c_low, c_high, rho = bapo_bounds(*tokens(rows), DEFAULT)
    assert (c_low, c_high) == pytest.approx((0.70, 3.0))
    assert rho == pytest.approx(2 / 3)


def test_unreachable_target_stops_both_bounds_at_their_maxima():
    # the negative token has r = 1 >= every c_low (max 0.9): rho stays 0.1 / 1.0
    rows = [(1.0, 1.0, 0.1), (1.0, -1.0, 0.9)]
    c_low, c_high, rho = bapo_bounds(*tokens(rows), DEFAULT)
    assert (c_low, c_high) == pytest.approx((0.9, 3.0))
    assert rho == pytest.approx(0.1)


def test_config_parameters_are_honoured():
    # same data as test_only_c_high_moves: with d1 = 0.2 the second candidate (1.4) already includes r=1.32
    rows = [(1.32, 1.0, 0.5), (1.0, 1.0, 0.1), (1.0, -1.0, 0.5)]
    c_low, c_high, _ = bapo_bounds(*tokens(rows), BAPOConfig(d1=0.2))
    assert (c_low, c_high) == pytest.approx((0.6, 1.4))
    # a target of 0.7 is never reached (0.603 at most): both bounds end at their maxima
    c_low, c_high, rho = bapo_bounds(*tokens(rows), BAPOConfig(rho0=0.7, b_plus=2.0, b_minus=0.7))
    assert (c_low, c_high, rho) == pytest.approx((0.7, 2.0, 0.76 / 1.26))


def test_masked_and_zero_advantage_tokens_carry_no_mass():
    ratio = torch.tensor([[1.0, 1.0, 1.0]])
    adv = torch.tensor([[1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third negative token is padding
    behavior = torch.log(torch.tensor([[0.3, 0.4, 0.9]]))
    c_low, c_high, rho = bapo_bounds(ratio, adv, mask, behavior, DEFAULT)
    assert (c_low, c_high, rho) == pytest.approx((0.6, 1.2, 0.3 / 0.7))
    # all advantages zero: nothing to balance, bounds stay
    assert bapo_bounds(ratio, torch.zeros_like(adv), mask, behavior, DEFAULT) == pytest.approx((0.6, 1.2, 1.0))


def _random_tokens(seed: int, count: int):
    gen = torch.Generator().manual_seed(seed)
    ratio = torch.exp(0.6 * torch.randn(count, generator=gen))
    adv = torch.randn(count, generator=gen) - 0.6  # mostly negative: the loop has to work
    mask = (torch.rand(count, generator=gen) < 0.9).float()
    behavior = -torch.rand(count, generator=gen) * 3
    return ratio, adv, mask, behavior


def test_shard_sums_add_up_to_the_concatenated_batch():
    ratio, adv, mask, behavior = _random_tokens(seed=1, count=3000)
    ladder = bapo_ladder(DEFAULT)
    whole = bapo_contribution_sums(ratio, adv, mask, behavior, ladder)
    shards = [slice(0, 1000), slice(1000, 1700), slice(1700, 3000)]
    summed = sum(bapo_contribution_sums(ratio[s], adv[s], mask[s], behavior[s], ladder) for s in shards)
    assert torch.allclose(summed, whole, rtol=1e-12)
    expected = bapo_bounds(ratio, adv, mask, behavior, DEFAULT)
    assert select_bounds(summed, ladder, DEFAULT.rho0) == pytest.approx(expected)
    # the data really moves the bounds (otherwise this test would prove little)
    assert bapo_bounds(ratio, adv, mask, behavior, DEFAULT)[1] > DEFAULT.a_plus


def test_sums_match_a_direct_per_candidate_loop():
    ratio, adv, mask, behavior = _random_tokens(seed=2, count=500)
    ladder = bapo_ladder(DEFAULT)
    sums = bapo_contribution_sums(ratio, adv, mask, behavior, ladder)
    for k, (c_low, c_high) in enumerate(ladder):
        pos = neg = 0.0
        for r, a, m, lp in zip(ratio.tolist(), adv.tolist(), mask.tolist(), behavior.tolist()):
            mass = math.exp(lp) * abs(r * a)
            if m and a > 0 and r <= c_high:
                pos += mass
            elif m and a < 0 and r >= c_low:
                neg += mass
        assert sums[k].tolist() == pytest.approx([pos, neg], rel=1e-9)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, tokens, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ratio, adv, mask, behavior = tokens
        shard = slice(rank * 1500, (rank + 1) * 1500)
        results[rank] = bapo_bounds(ratio[shard], adv[shard], mask[shard], behavior[shard], DEFAULT)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_agree_with_the_single_process_result():
    # The ranks get the parent's tensors, so that only the all-reduce is compared: in one CI run
    # (stop 17) inputs regenerated in each rank gave a rho 2e-6 off (cause not found, not reproduced).
    tokens = _random_tokens(seed=1, count=3000)
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(2, _free_port(), tokens, results), nprocs=2, join=True)
    expected = bapo_bounds(*tokens, DEFAULT)
    assert results[0] == pytest.approx(expected)
    assert results[1] == results[0]
