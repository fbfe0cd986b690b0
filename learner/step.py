"""One optimizer update on one rank's share of the batch (CleanRL-style, top to bottom).

1. a no-grad pass at the weights before this update gives the proximal logprobs (and the
   reference logprobs when a KL term is configured); from them the objective fixes its per-step
   state (BAPO's bounds), and the loss of every micro-batch is evaluated once without a graph;
2. all ranks agree whether every such loss was finite: if not, the step is skipped before any
   backward, so no gradient state (ZeRO partitions included) is touched;
3. micro-batches packed by a token budget: forward, loss normalised by GLOBAL counts, backward;
   every rank runs the same number of backwards (ZeRO-2 reduces gradients in each one), then
   `step()` reduces the rest and updates.

Self-imitation (SPEAR), when given, adds the replayed trajectories as extra micro-batches of the
same update, with their own normalisers and loss, before the ranks agree on the backward count
and on finiteness: the invariants above then cover them unchanged.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from learner.batch import TrainBatch
from learner.engine import PolicyEngine
from learner.loss_config import PolicyLossConfig, SelfImitationConfig
from learner.losses import (LossInputs, Normalizers, StepState, compute_normalizers, finalize_metrics, policy_loss,
                            prepare_step)
from learner.self_imitation import self_imitation_loss

# Reported by every rank whenever self-imitation is on, so that all ranks reduce the same keys.
SELF_IMITATION_KEYS = ("sil/loss", "sil/num_replayed")


@dataclass
class FixedLogprobs:
    """What the no-grad pass fixes for one micro-batch: logprobs at the weights before the update."""

    proximal: torch.Tensor
    entropy: torch.Tensor
    reference: torch.Tensor | None


@dataclass
class SelfImitationReplay:
    """This rank's replayed trajectories for one update (the advantages: the recalibrated ones)."""

    batch: TrainBatch | None  # None: nothing to replay on this rank (other ranks may have some)
    cfg: SelfImitationConfig
    step: int  # t of the weight schedule
    generator: torch.Generator  # Clip-Cov's random choice on the replayed tokens


# (logprobs, entropy) of one micro-batch at the current weights -> (loss, additive metrics)
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class MicroBatchWork:
    batch: TrainBatch
    fixed: FixedLogprobs
    loss: LossFn


def _all_ranks(values: list[float], op: str) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()


@torch.no_grad()
def fixed_logprobs(engine: PolicyEngine, micro_batches: list[TrainBatch],
                   with_reference: bool = True) -> list[FixedLogprobs]:
    fixed = []
    for mb in micro_batches:
        proximal, entropy = engine.token_logprobs(mb.input_ids, mb.attention_mask)
        use_reference = with_reference and engine.reference is not None
        reference = engine.reference.token_logprobs(mb.input_ids, mb.attention_mask) if use_reference else None
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


def _inputs(logprobs: torch.Tensor, mb: TrainBatch, **extra) -> LossInputs:
    device = logprobs.device
    return LossInputs(logprobs=logprobs, behavior_logprobs=mb.behavior_logprobs.to(device),
                      advantages=mb.advantages.to(device), mask=mb.loss_mask.to(device), **extra)


def _policy_loss(logprobs: torch.Tensor, entropy: torch.Tensor, mb: TrainBatch, fixed: FixedLogprobs,
                 norm: Normalizers, state: StepState, cfg: PolicyLossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    inputs = _inputs(logprobs, mb, proximal_logprobs=fixed.proximal, ref_logprobs=fixed.reference, entropy=entropy)
    return policy_loss(inputs, norm, state, cfg)


def _replay_loss(logprobs: torch.Tensor, entropy: torch.Tensor, mb: TrainBatch, norm: Normalizers,
                 replay: SelfImitationReplay) -> tuple[torch.Tensor, dict[str, float]]:
    loss, _ = self_imitation_loss(_inputs(logprobs, mb), norm, replay.step, replay.cfg, replay.generator)
    return loss, {"sil/loss": float(loss.detach()), "sil/num_replayed": float(mb.num_rows)}


def _replay_normalizers(micro_batches: list[TrainBatch]) -> Normalizers | None:
    """Normalisers of the replayed part over all ranks; None when no rank replays a token.
    Collective (unlike `compute_normalizers`, it accepts a rank with nothing to replay)."""
    lengths = [float(n) for mb in micro_batches for n in mb.loss_mask.sum(-1).tolist()]
    tokens, sequences = _all_ranks([sum(lengths), float(sum(n > 0 for n in lengths))], "sum")
    (longest,) = _all_ranks([max(lengths, default=0.0)], "max")
    return Normalizers(tokens, sequences, int(longest)) if tokens > 0 else None


def _replay_work(engine: PolicyEngine, replay: SelfImitationReplay | None,
                 micro_batch_tokens: int) -> list[MicroBatchWork]:
    if replay is None:
        return []
    micro_batches = replay.batch.micro_batches(micro_batch_tokens) if replay.batch is not None else []
    norm = _replay_normalizers(micro_batches)
    if norm is None:
        return []
    fixed = fixed_logprobs(engine, micro_batches, with_reference=False)
    return [MicroBatchWork(mb, f, partial(_replay_loss, mb=mb, norm=norm, replay=replay))
            for mb, f in zip(micro_batches, fixed)]


def _summed_over_ranks(summed: dict[str, float]) -> dict[str, float]:
    keys = sorted(summed)  # every rank has the same keys (they depend on the config only)
    return finalize_metrics(dict(zip(keys, _all_ranks([summed[k] for k in keys], "sum"))))


@torch.no_grad()
def _losses_before_update(work: list[MicroBatchWork], summed: dict[str, float]) -> tuple[dict[str, float], bool]:
    """Summed metrics and whether every loss is finite, at the current weights (no graph)."""
    summed = defaultdict(float, summed)
    finite = True
    for w in work:
        loss, metrics = w.loss(w.fixed.proximal, w.fixed.entropy)
        finite = finite and math.isfinite(float(loss))
        for key, value in metrics.items():
            summed[key] += value
    return summed, finite


def _accumulate_gradients(engine: PolicyEngine, work: list[MicroBatchWork], num_backwards: int,
                          summed: dict[str, float]) -> dict[str, float]:
    summed = defaultdict(float, summed)
    for w in work:
        logprobs, entropy = engine.token_logprobs(w.batch.input_ids, w.batch.attention_mask)
        loss, metrics = w.loss(logprobs, entropy)
        engine.backward(loss)
        for key, value in metrics.items():
            summed[key] += value
    for _ in range(num_backwards - len(work)):
        engine.backward_padding()
    return summed


def _finished(summed: dict[str, float], extra: dict[str, float], grad_norm: float) -> dict[str, float]:
    metrics = _summed_over_ranks(summed) | extra
    loss = metrics["loss/total"] + metrics.get("sil/loss", 0.0)  # what the update minimises
    return metrics | {"loss": loss, "grad_norm": grad_norm}


def train_step(engine: PolicyEngine, batch: TrainBatch, cfg: PolicyLossConfig, micro_batch_tokens: int,
               generator: torch.Generator | None = None,
               replay: SelfImitationReplay | None = None) -> tuple[dict[str, float], bool]:
    """Returns (metrics, applied); metrics are summed over micro-batches and ranks, then finalised.
    Collective: every rank of the process group calls it once per update, all with a replay or
    all without."""
    micro_batches = batch.micro_batches(micro_batch_tokens)
    norm = compute_normalizers([mb.loss_mask for mb in micro_batches])
    fixed = fixed_logprobs(engine, micro_batches)
    state = _step_state(cfg, micro_batches, fixed, generator)
    work = [MicroBatchWork(mb, f, partial(_policy_loss, mb=mb, fixed=f, norm=norm, state=state, cfg=cfg))
            for mb, f in zip(micro_batches, fixed)]
    work += _replay_work(engine, replay, micro_batch_tokens)
    initial = dict.fromkeys(SELF_IMITATION_KEYS, 0.0) if replay is not None else {}
    summed, finite = _losses_before_update(work, initial)
    most_micro_batches, any_rank_bad = _all_ranks([len(work), 0.0 if finite else 1.0], "max")
    extra = {"micro_batches": len(micro_batches)} | state.metrics
    if any_rank_bad:
        return _finished(summed, extra, math.nan), False
    summed = _accumulate_gradients(engine, work, int(most_micro_batches), initial)
    metrics = _finished(summed, extra, math.nan)  # reduced over the ranks before the update, as ever
    return metrics | {"grad_norm": engine.step()}, True
