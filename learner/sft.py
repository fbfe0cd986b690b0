"""A short supervised warm start in plain torch (no DeepSpeed): loss on completion tokens only."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and HF models) skip


@dataclass(frozen=True)
class SFTExample:
    """A plain-text episode: prompt, the model's first turn, then (observation, model turn) pairs."""

    prompt: str
    completion: str  # without the EOS token: the tokenizer's EOS is appended as a target
    turns: tuple[tuple[str, str], ...] = ()  # later (env observation, model turn) pairs of a multi-turn episode


def _example_tokens(tokenizer: PreTrainedTokenizerBase, example: SFTExample) -> tuple[list[int], list[int]]:
    """(input ids, labels) laid out as the rollout worker builds a plain-text context: the prompt with
    BOS, each model turn ending in EOS (trained on), each observation appended as it is (not trained)."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids = tokenizer(example.prompt)["input_ids"]  # adds BOS, as generation will
    labels = [IGNORE_INDEX] * len(ids)
    for observation, turn in ((None, example.completion), *example.turns):
        if observation is not None:
            observed = encode(observation)
            ids, labels = ids + observed, labels + [IGNORE_INDEX] * len(observed)
        generated = [*encode(turn), tokenizer.eos_token_id]
        ids, labels = ids + generated, labels + generated
    return ids, labels


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[SFTExample]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); labels are IGNORE_INDEX on prompt, observations
    and padding."""
    rows = [_example_tokens(tokenizer, example) for example in examples]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, targets) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(targets)
        attention_mask[i, : len(ids)] = 1
    return input_ids, attention_mask, labels


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def sft_warm_start(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[SFTExample],
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> dict[str, float]:
    """Train `model` in place for `steps` AdamW steps on batches drawn (with replacement) from
    `examples`. Returns metrics: first and final loss (mean of the last 10 steps), seconds."""
    if steps < 1 or batch_size < 1 or not examples:
        raise ValueError(f"sft needs steps >= 1, batch_size >= 1 and examples, got {steps}, {batch_size}, {len(examples)}")
    input_ids, attention_mask, labels = tokenize_examples(tokenizer, examples)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, max(1, steps // 20)))
    model.train()
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        batch = torch.randint(len(examples), (batch_size,), generator=generator)
        loss = model(input_ids=input_ids[batch], attention_mask=attention_mask[batch], labels=labels[batch]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    tail = losses[-10:]
    return {"sft/loss_first": losses[0], "sft/loss_final": sum(tail) / len(tail), "sft/seconds": time.perf_counter() - start}
