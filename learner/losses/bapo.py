"""BAPO adaptive clipping bounds for one update batch (ALGORITHMS.md, "BAPO").

The loop of the paper raises c_high by d1 (up to b_plus), then c_low by d2 (up to b_minus),
until positive-advantage tokens carry a share rho0 of the gradient mass. The sequence of
candidate bounds it visits does not depend on the data, so all candidates are evaluated in one
pass and, under data parallelism, reduced with ONE all-reduce of a [K, 2] tensor; the answer is
the first candidate that reaches rho0, or the last one when none does. Mass is measured over
gradient-carrying tokens only: contribution_t = pi_beh(y_t) |r_t A_t| for A_t > 0 and
r_t <= c_high, or A_t < 0 and r_t >= c_low.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from learner.loss_config import BAPOConfig

_LADDER_DECIMALS = 12  # 1.2 + 3 * 0.05 is 1.3500000000000001 in floats; round to the intended 1.35


def bapo_ladder(cfg: BAPOConfig) -> list[tuple[float, float]]:
    """The (c_low, c_high) pairs the loop visits, in order."""
    high_steps = int((cfg.b_plus - cfg.a_plus) / cfg.d1 + 1e-9)
    low_steps = int((cfg.b_minus - cfg.a_minus) / cfg.d2 + 1e-9)
    ladder = [(cfg.a_minus, cfg.a_plus)]
    if low_steps == 0:  # the loop's guard `c_low + d2 <= b_minus` fails at once: no step at all
        return ladder
    ladder += [(cfg.a_minus, cfg.a_plus + k * cfg.d1) for k in range(1, high_steps + 1)]
    top = cfg.a_plus + high_steps * cfg.d1
    ladder += [(cfg.a_minus + j * cfg.d2, top) for j in range(1, low_steps + 1)]
    return [(round(low, _LADDER_DECIMALS), round(high, _LADDER_DECIMALS)) for low, high in ladder]


def _weight_at_most(values: torch.Tensor, weights: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """For each threshold t: sum of the weights whose value is <= t (sort + prefix sums)."""
    values, order = torch.sort(values)
    prefix = torch.cat([weights.new_zeros(1), torch.cumsum(weights[order], 0)])
    return prefix[torch.searchsorted(values, thresholds, right=True)]


def bapo_contribution_sums(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    ladder: list[tuple[float, float]],
) -> torch.Tensor:
    """[K, 2] float64: (positive, negative) gradient mass of this shard for each candidate pair.
    Additive over shards: the sums of the shards equal the sums of their concatenation."""
    valid = mask.reshape(-1) > 0
    r = ratio.detach().reshape(-1)[valid].to(torch.float64)
    adv = advantages.detach().reshape(-1)[valid].to(torch.float64)
    contribution = behavior_logprobs.detach().reshape(-1)[valid].to(torch.float64).exp() * (r * adv).abs()
    c_lows, c_highs = torch.tensor(ladder, dtype=torch.float64, device=r.device).T.contiguous()
    positive, negative = adv > 0, adv < 0
    pos_mass = _weight_at_most(r[positive], contribution[positive], c_highs)
    # negative tokens with r >= c_low are those with -r <= -c_low
    neg_mass = _weight_at_most(-r[negative], contribution[negative], -c_lows)
    return torch.stack([pos_mass, neg_mass], dim=1)


def select_bounds(sums: torch.Tensor, ladder: list[tuple[float, float]], rho0: float) -> tuple[float, float, float]:
    """First candidate whose positive share reaches rho0, else the last (both bounds at their maxima)."""
    pos, total = sums[:, 0], sums.sum(dim=1)
    # No gradient-carrying mass at all (e.g. every advantage is 0): nothing to rebalance.
    rho = torch.where(total > 0, pos / total.clamp(min=torch.finfo(total.dtype).tiny), torch.ones_like(total))
    reached = (rho >= rho0).nonzero()
    k = int(reached[0]) if len(reached) else len(ladder) - 1
    c_low, c_high = ladder[k]
    return c_low, c_high, float(rho[k])


def bapo_bounds(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    cfg: BAPOConfig,
) -> tuple[float, float, float]:
    """(c_low, c_high, rho) for one update batch, over all ranks when torch.distributed is up.
    Tensors: 1-D (flattened tokens) or [B, T], all the same shape; mask is 0/1."""
    ladder = bapo_ladder(cfg)
    sums = bapo_contribution_sums(ratio, advantages, mask, behavior_logprobs, ladder)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return select_bounds(sums, ladder, cfg.rho0)
