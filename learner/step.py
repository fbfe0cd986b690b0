"""One optimizer update on one rank's share of the batch (CleanRL-style, top to bottom).

1. a no-grad pass at the weights before this update gives the proximal logprobs (and the
   reference logprobs when a KL term is configured); from them the objective fixes its per-step
   state (BAPO's bounds), and the loss of every micro-batch is evaluated once without a graph;
2. all ranks agree whether every such loss was finite: if not, the step is skipped before any
   backward, so no gradient state (ZeRO partitions included) is touched;
3. micro-batches packed by a token budget: forward, loss normalised by GLOBAL counts, backward;
   every rank runs the same number of backwards (ZeRO-2 reduces gradients in each one), then
   `step()` reduces the rest and updates.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist

from learner.batch import TrainBatch
from learner.engine import PolicyEngine
from learner.loss_config import PolicyLossConfig
from learner.losses import (LossInputs, Normalizers, StepState, compute_normalizers, finalize_metrics, policy_loss,
                            prepare_step)


@dataclass
class FixedLogprobs:
    """What the no-grad pass fixes for one micro-batch: logprobs at the weights before the update."""

    proximal: torch.Tensor
    entropy: torch.Tensor
    reference: torch.Tensor | None


def _all_ranks(values: list[float], op: str) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()


@torch.no_grad()
def fixed_logprobs(engine: PolicyEngine, micro_batches: list[TrainBatch]) -> list[FixedLogprobs]:
    fixed = []
    for mb in micro_batches:
        proximal, entropy = engine.token_logprobs(mb.input_ids, mb.attention_mask)
        reference = engine.reference.token_logprobs(mb.input_ids, mb.attention_mask) if engine.reference else None
        fixed.append(FixedLogprobs(proximal=proximal, entropy=entropy, reference=reference))
    return fixed


def _step_state(cfg: PolicyLossConfig, micro_batches: list[TrainBatch], fixed: list[FixedLogprobs],
                generator: torch.Generator | None) -> StepState:
    """The objective's per-step state from this rank's masked tokens (BAPO reduces over ranks)."""
    masks = [mb.loss_mask > 0 for mb in micro_batches]

    def flat(values) -> torch.Tensor:
        return torch.cat([v.cpu()[m] for v, m in zip(values, masks)])

    behavior = [mb.behavior_logprobs for mb in micro_batches]
    log_ratio = [f.proximal.cpu() - b for f, b in zip(fixed, behavior)]
    return prepare_step(cfg, ratio=flat([r.clamp(-20, 20).exp() for r in log_ratio]),
                        advantages=flat([mb.advantages for mb in micro_batches]),
                        mask=flat([mb.loss_mask for mb in micro_batches]), behavior_logprobs=flat(behavior),
                        generator=generator)


def _loss(logprobs: torch.Tensor, entropy: torch.Tensor, mb: TrainBatch, fixed: FixedLogprobs,
          norm: Normalizers, state: StepState, cfg: PolicyLossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    device = logprobs.device
    inputs = LossInputs(logprobs=logprobs, behavior_logprobs=mb.behavior_logprobs.to(device),
                        advantages=mb.advantages.to(device), mask=mb.loss_mask.to(device),
                        proximal_logprobs=fixed.proximal, ref_logprobs=fixed.reference, entropy=entropy)
    return policy_loss(inputs, norm, state, cfg)


def _summed_over_ranks(summed: dict[str, float]) -> dict[str, float]:
    keys = sorted(summed)  # every rank has the same keys (they depend on the config only)
    return finalize_metrics(dict(zip(keys, _all_ranks([summed[k] for k in keys], "sum"))))


@torch.no_grad()
def _losses_before_update(micro_batches: list[TrainBatch], fixed: list[FixedLogprobs], norm: Normalizers,
                          state: StepState, cfg: PolicyLossConfig) -> tuple[dict[str, float], bool]:
    """Summed metrics and whether every loss is finite, at the current weights (no graph)."""
    summed: dict[str, float] = defaultdict(float)
    finite = True
    for mb, f in zip(micro_batches, fixed):
        loss, metrics = _loss(f.proximal, f.entropy, mb, f, norm, state, cfg)
        finite = finite and math.isfinite(float(loss))
        for key, value in metrics.items():
            summed[key] += value
    return summed, finite


def _accumulate_gradients(engine: PolicyEngine, micro_batches: list[TrainBatch], fixed: list[FixedLogprobs],
                          norm: Normalizers, state: StepState, cfg: PolicyLossConfig,
                          num_backwards: int) -> dict[str, float]:
    summed: dict[str, float] = defaultdict(float)
    for mb, f in zip(micro_batches, fixed):
        logprobs, entropy = engine.token_logprobs(mb.input_ids, mb.attention_mask)
        loss, metrics = _loss(logprobs, entropy, mb, f, norm, state, cfg)
        engine.backward(loss)
        for key, value in metrics.items():
            summed[key] += value
    for _ in range(num_backwards - len(micro_batches)):
        engine.backward_padding()
    return summed


def train_step(engine: PolicyEngine, batch: TrainBatch, cfg: PolicyLossConfig, micro_batch_tokens: int,
               generator: torch.Generator | None = None) -> tuple[dict[str, float], bool]:
    """Returns (metrics, applied); metrics are summed over micro-batches and ranks, then finalised.
    Collective: every rank of the process group calls it once per update."""
    micro_batches = batch.micro_batches(micro_batch_tokens)
    norm = compute_normalizers([mb.loss_mask for mb in micro_batches])
    fixed = fixed_logprobs(engine, micro_batches)
    state = _step_state(cfg, micro_batches, fixed, generator)
    summed, finite = _losses_before_update(micro_batches, fixed, norm, state, cfg)
    most_micro_batches, any_rank_bad = _all_ranks([len(micro_batches), 0.0 if finite else 1.0], "max")
    extra = {"micro_batches": len(micro_batches)} | state.metrics
    if any_rank_bad:
        metrics = _summed_over_ranks(summed) | extra
        return metrics | {"loss": metrics["loss/total"], "grad_norm": math.nan}, False
    summed = _accumulate_gradients(engine, micro_batches, fixed, norm, state, cfg, int(most_micro_batches))
    metrics = _summed_over_ranks(summed) | extra
    grad_norm = engine.step()
    return metrics | {"loss": metrics["loss/total"], "grad_norm": grad_norm}, True
