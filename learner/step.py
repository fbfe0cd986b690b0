"""One optimizer update on one rank's share of the batch (CleanRL-style, top to bottom).

Micro-batches are packed by a token budget; each is forward, loss normalised by GLOBAL counts,
backward; every rank runs the same number of backwards, then `step()` reduces and updates. An
update is one optimizer step, so the weights before it ARE the proximal policy: the detached
logprobs of the forward with graph are what a recompute pass would give (decoupled correction
and TIS use them). Only BAPO needs logprobs before the first backward (its bounds come from the
whole batch's ratios), so only BAPO pays a no-grad pass:

- BAPO: the no-grad pass gives the proximal logprobs, the bounds, and every micro-batch's loss
  without a graph; all ranks agree that all were finite before any backward.
- everything else: after each micro-batch's forward the ranks agree that its loss was finite
  (one scalar all-reduce) before its backward; a non-finite one anywhere makes every rank drop
  the gradients accumulated so far and skip the step.
Either way nothing is applied unless every loss on every rank was finite. The reference policy's
logprobs (KL) come from its own no-grad pass in both.

Self-imitation (SPEAR), when given, adds the replayed trajectories as extra micro-batches of the
same update, with their own normalisers and loss, before the ranks agree on the backward count
and on finiteness: the invariants above then cover them unchanged.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from learner.batch import TrainBatch
from learner.engine import PolicyEngine
from learner.loss_config import PolicyLossConfig, SelfImitationConfig
from learner.losses import (LossInputs, Normalizers, StepState, compute_normalizers, finalize_metrics,
                            fixed_step_state, policy_loss, prepare_step)
from learner.self_imitation import self_imitation_loss

# Reported by every rank whenever self-imitation is on, so that all ranks reduce the same keys.
SELF_IMITATION_KEYS = ("sil/loss", "sil/num_replayed")


@dataclass
class FixedLogprobs:
    """What no-grad passes fix for one micro-batch: the policy's logprobs and entropy at the weights
    before the update (None when the loss does not need them) and the reference policy's."""

    proximal: torch.Tensor | None
    entropy: torch.Tensor | None
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
def fixed_logprobs(engine: PolicyEngine, micro_batches: list[TrainBatch], with_policy: bool,
                   with_reference: bool = True) -> list[FixedLogprobs]:
    fixed = []
    use_reference = with_reference and engine.reference is not None
    for mb in micro_batches:
        proximal, entropy = engine.token_logprobs(mb.input_ids, mb.attention_mask) if with_policy else (None, None)
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


def _replay_work(engine: PolicyEngine, replay: SelfImitationReplay | None, micro_batch_tokens: int,
                 checked_before: bool) -> list[MicroBatchWork]:
    if replay is None:
        return []
    micro_batches = replay.batch.micro_batches(micro_batch_tokens) if replay.batch is not None else []
    norm = _replay_normalizers(micro_batches)
    if norm is None:
        return []
    fixed = fixed_logprobs(engine, micro_batches, with_policy=checked_before, with_reference=False)
    return [MicroBatchWork(mb, f, partial(_replay_loss, mb=mb, norm=norm, replay=replay))
            for mb, f in zip(micro_batches, fixed)]


def _summed_over_ranks(summed: dict[str, float]) -> dict[str, float]:
    keys = sorted(summed)  # every rank has the same keys (they depend on the config only)
    return finalize_metrics(dict(zip(keys, _all_ranks([summed[k] for k in keys], "sum"))))


@torch.no_grad()
def _losses_before_update(work: list[MicroBatchWork], summed: dict[str, float]) -> bool:
    """Whether every loss is finite at the current weights, from the no-grad pass (no graph); adds
    the metrics to `summed` (they are reported when the step is skipped)."""
    finite = True
    for w in work:
        loss, metrics = w.loss(w.fixed.proximal, w.fixed.entropy)
        finite = finite and math.isfinite(float(loss))
        for key, value in metrics.items():
            summed[key] += value
    return finite


def _forward(engine: PolicyEngine, w: MicroBatchWork, summed: dict[str, float]) -> torch.Tensor:
    logprobs, entropy = engine.token_logprobs(w.batch.input_ids, w.batch.attention_mask)
    loss, metrics = w.loss(logprobs, entropy)
    for key, value in metrics.items():
        summed[key] += value
    return loss


def _accumulate_gradients(engine: PolicyEngine, work: list[MicroBatchWork], num_backwards: int,
                          summed: dict[str, float]) -> bool:
    """Forward, agree that the loss is finite on every rank, backward; micro-batch by micro-batch
    (a rank out of micro-batches runs padding backwards). Returns False (gradients dropped,
    nothing applied) as soon as one rank had a non-finite loss. After BAPO's no-grad check it
    cannot fail; the agreement is then one redundant scalar all-reduce per micro-batch."""
    for index in range(num_backwards):
        loss = _forward(engine, work[index], summed) if index < len(work) else None
        (any_rank_bad,) = _all_ranks([0.0 if loss is None or math.isfinite(float(loss.detach())) else 1.0], "max")
        if any_rank_bad:
            engine.discard_gradients()
            return False
        if loss is None:
            engine.backward_padding()
        else:
            engine.backward(loss)
    return True


def _finished(summed: dict[str, float], extra: dict[str, float], grad_norm: float) -> dict[str, float]:
    metrics = _summed_over_ranks(summed) | extra
    loss = metrics["loss/total"] + metrics.get("sil/loss", 0.0)  # what the update minimises
    return metrics | {"loss": loss, "grad_norm": grad_norm}


def train_step(engine: PolicyEngine, batch: TrainBatch, cfg: PolicyLossConfig, micro_batch_tokens: int,
               generator: torch.Generator | None = None,
               replay: SelfImitationReplay | None = None) -> tuple[dict[str, float], bool]:
    """Returns (metrics, applied); metrics are summed over micro-batches and ranks, then finalised
    (on a skipped step: over the micro-batches evaluated). Collective: every rank of the process
    group calls it once per update, all with a replay or all without."""
    started = time.perf_counter()
    micro_batches = batch.micro_batches(micro_batch_tokens)
    norm = compute_normalizers([mb.loss_mask for mb in micro_batches])
    checked_before = cfg.needs_ratios_before_update
    fixed = fixed_logprobs(engine, micro_batches, with_policy=checked_before)
    state = _step_state(cfg, micro_batches, fixed, generator) if checked_before else fixed_step_state(cfg, generator)
    work = [MicroBatchWork(mb, f, partial(_policy_loss, mb=mb, fixed=f, norm=norm, state=state, cfg=cfg))
            for mb, f in zip(micro_batches, fixed)]
    work += _replay_work(engine, replay, micro_batch_tokens, checked_before)
    initial = dict.fromkeys(SELF_IMITATION_KEYS, 0.0) if replay is not None else {}
    extra = {"micro_batches": len(micro_batches)} | state.metrics
    summed = defaultdict(float, initial)
    finite = _losses_before_update(work, summed) if checked_before else True
    most_micro_batches, any_rank_bad = _all_ranks([len(work), 0.0 if finite else 1.0], "max")
    if any_rank_bad:
        return _finished(summed, extra, math.nan), False
    summed = defaultdict(float, initial)
    if not _accumulate_gradients(engine, work, int(most_micro_batches), summed):
        return _finished(summed, extra, math.nan), False
    backward_done = time.perf_counter()
    metrics = _finished(summed, extra, math.nan)  # reduced over the ranks before the update, as ever
    grad_norm, applied = engine.step()
    return metrics | {"grad_norm": grad_norm} | _timings(started, backward_done), applied


def _timings(started: float, backward_done: float) -> dict[str, float]:
    """Where the update's time went: no-grad passes, forwards and backwards; then the optimizer
    step (gradient reduction, clipping, update)."""
    return {"time/forward_backward_s": backward_done - started, "time/optimizer_s": time.perf_counter() - backward_done}
