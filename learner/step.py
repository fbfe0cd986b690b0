"""One optimizer update on one rank's share of the batch (CleanRL-style, top to bottom).

1. a no-grad pass gives the proximal logprobs (the weights before this update), from which the
   objective fixes its per-step state (BAPO's bounds);
2. micro-batches packed by a token budget: forward, loss normalised by GLOBAL counts, backward;
3. all ranks agree whether every loss was finite; if not, the step is skipped, else applied.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.distributed as dist

from learner.batch import TrainBatch
from learner.engine import PolicyEngine
from learner.loss_config import PolicyLossConfig
from learner.losses import LossInputs, compute_normalizers, finalize_metrics, policy_loss, prepare_step


def _all_ranks_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


@torch.no_grad()
def proximal_logprobs(engine: PolicyEngine, micro_batches: list[TrainBatch]) -> list[torch.Tensor]:
    return [engine.token_logprobs(mb.input_ids, mb.attention_mask)[0].cpu() for mb in micro_batches]


def train_step(engine: PolicyEngine, batch: TrainBatch, cfg: PolicyLossConfig, micro_batch_tokens: int,
               generator: torch.Generator | None = None) -> tuple[dict[str, float], bool]:
    """Returns (metrics, applied); metrics are summed over micro-batches and ranks, then finalised."""
    micro_batches = batch.micro_batches(micro_batch_tokens)
    norm = compute_normalizers([mb.loss_mask for mb in micro_batches])
    proximal = proximal_logprobs(engine, micro_batches)
    on_mask = [mb.loss_mask > 0 for mb in micro_batches]
    state = prepare_step(
        cfg,
        ratio=torch.cat([(p - mb.behavior_logprobs).clamp(-20, 20).exp()[m] for p, mb, m in zip(proximal, micro_batches, on_mask)]),
        advantages=torch.cat([mb.advantages[m] for mb, m in zip(micro_batches, on_mask)]),
        mask=torch.cat([mb.loss_mask[m] for mb, m in zip(micro_batches, on_mask)]),
        behavior_logprobs=torch.cat([mb.behavior_logprobs[m] for mb, m in zip(micro_batches, on_mask)]),
        generator=generator,
    )
    summed: dict[str, float] = defaultdict(float)
    finite = True
    for mb, prox in zip(micro_batches, proximal):
        logprobs, entropy = engine.token_logprobs(mb.input_ids, mb.attention_mask)
        inputs = LossInputs(logprobs=logprobs, behavior_logprobs=mb.behavior_logprobs.to(logprobs.device),
                            advantages=mb.advantages.to(logprobs.device), mask=mb.loss_mask.to(logprobs.device),
                            proximal_logprobs=prox.to(logprobs.device), entropy=entropy)
        loss, metrics = policy_loss(inputs, norm, state, cfg)
        finite = finite and math.isfinite(float(loss.detach()))
        if finite:
            engine.backward(loss)
        for key, value in metrics.items():
            summed[key] += value
    keys = sorted(summed)
    totals = _all_ranks_sum([summed[k] for k in keys] + [0.0 if finite else 1.0])
    applied = totals[-1] == 0.0  # every rank's every micro-batch was finite
    metrics = finalize_metrics(dict(zip(keys, totals[:-1]))) | state.metrics | {"micro_batches": len(micro_batches)}
    if applied:
        metrics["grad_norm"] = engine.step()
    else:
        engine.skip_step()
    metrics["loss"] = metrics.get("loss/total", float("nan"))
    return metrics, applied
