"""Reduction of a per-token loss [B, T] to a scalar, by mode name (the four modes of verl).

Every mode divides by GLOBAL normalisers (over the whole update batch, all ranks), so the
sum over micro-batches and ranks of the micro-batch values equals the whole-batch value:
data parallelism and gradient accumulation then sum gradients without re-weighting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from envs.registry import Registry


@dataclass(frozen=True)
class Normalizers:
    """Totals over the whole update batch (all micro-batches, all ranks)."""

    num_tokens: float  # masked (policy-generated) tokens
    num_sequences: float  # sequences with at least one masked token
    max_len: int  # L_max of Dr. GRPO: longest sequence in masked tokens (or the generation budget)

    def __post_init__(self) -> None:
        if self.num_tokens <= 0 or self.num_sequences <= 0 or self.max_len <= 0:
            raise ValueError(f"normalisers must be positive, got {self}")


def compute_normalizers(masks: Sequence[torch.Tensor]) -> Normalizers:
    """Normalisers of this rank's micro-batch masks [B, T], reduced over ranks when distributed."""
    tokens_per_seq = [m.reshape(-1, m.shape[-1]).sum(-1) for m in masks]
    lengths = torch.cat(tokens_per_seq)
    totals = torch.stack([lengths.sum(), (lengths > 0).sum().to(lengths.dtype)]).to(torch.float64)
    longest = lengths.max().to(torch.float64).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    return Normalizers(num_tokens=float(totals[0]), num_sequences=float(totals[1]), max_len=int(longest.item()))


AggregationFn = Callable[[torch.Tensor, torch.Tensor, Normalizers], torch.Tensor]
AGGREGATIONS: Registry[AggregationFn] = Registry("aggregation mode")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    # where(), not values * mask: padded positions may hold inf/nan (0 * inf = nan).
    masked = torch.where(mask > 0, values * mask, torch.zeros_like(values))
    return masked.sum() if dim is None else masked.sum(dim)


@AGGREGATIONS.register("token-mean")
def token_mean(values: torch.Tensor, mask: torch.Tensor, norm: Normalizers) -> torch.Tensor:
    return masked_sum(values, mask) / norm.num_tokens


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(values: torch.Tensor, mask: torch.Tensor, norm: Normalizers) -> torch.Tensor:
    # A sequence lies whole inside one micro-batch, so its own token count is local.
    per_sequence = masked_sum(values, mask, dim=-1) / mask.sum(-1).clamp(min=1)
    return per_sequence.sum() / norm.num_sequences


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(values: torch.Tensor, mask: torch.Tensor, norm: Normalizers) -> torch.Tensor:
    return masked_sum(values, mask) / norm.num_sequences


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(values: torch.Tensor, mask: torch.Tensor, norm: Normalizers) -> torch.Tensor:
    return masked_sum(values, mask) / (norm.num_sequences * norm.max_len)


def aggregate(mode: str, values: torch.Tensor, mask: torch.Tensor, norm: Normalizers) -> torch.Tensor:
    return AGGREGATIONS.get(mode)(values, mask, norm)
