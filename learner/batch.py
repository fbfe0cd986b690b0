"""From sampled groups to padded training tensors, and their packing into micro-batches.

Layout: one row per trajectory, `input_ids` = prompt + completion (right-padded). Per-token
tensors are aligned with the *targets* `input_ids[:, 1:]`, so position t holds what the model
predicts from the prefix ending at t; `loss_mask` is 1 exactly on policy-generated targets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from buffer import SampledGroup


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [N, L] int64
    attention_mask: torch.Tensor  # [N, L] int64
    loss_mask: torch.Tensor  # [N, L-1] float
    behavior_logprobs: torch.Tensor  # [N, L-1] float
    policy_versions: torch.Tensor  # [N, L-1] int64 (NO_VERSION off the mask)
    advantages: torch.Tensor  # [N, L-1] float: the sequence advantage on every target position
    lengths: torch.Tensor  # [N] prompt + completion tokens

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    def rows(self, index: torch.Tensor) -> "TrainBatch":
        """The given rows, trimmed to their longest sequence."""
        width = int(self.lengths[index].max().item())
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)[index]
            if f.name in ("input_ids", "attention_mask"):
                value = value[:, :width]
            elif f.name != "lengths":
                value = value[:, : width - 1]
            picked[f.name] = value
        return TrainBatch(**picked)

    def micro_batches(self, token_budget: int) -> list["TrainBatch"]:
        """Rows sorted by length and packed greedily so that rows x padded length <= token_budget."""
        lengths = self.lengths.tolist()  # Python ints: reading the tensor element by element cost ms an update
        batches, current = [], []
        for row in torch.argsort(self.lengths, descending=True).tolist():
            width = lengths[current[0] if current else row]  # longest first: a micro-batch is as wide as its first row
            if current and (len(current) + 1) * width > token_budget:
                batches.append(self.rows(torch.tensor(current)))
                current = []
            current.append(row)
        if current:
            batches.append(self.rows(torch.tensor(current)))
        return batches


def build_batch(samples: list[SampledGroup], advantages: list[np.ndarray], pad_id: int) -> TrainBatch:
    """Stack the trajectories of the sampled groups; `advantages[g][i]` is trajectory i of group g's advantage."""
    trajectories = [t for s in samples for t in s.group.trajectories]
    seq_advantages = np.concatenate(advantages).astype(np.float32)
    if len(seq_advantages) != len(trajectories):
        raise ValueError(f"{len(seq_advantages)} advantages for {len(trajectories)} trajectories")
    empty = [t.task_id for t in trajectories if len(t.prompt_ids) == 0]
    if empty:  # the first completion token is predicted from the last prompt token: there must be one
        raise ValueError(f"trajectories with an empty prompt (task ids {empty})")
    lengths = [len(t.prompt_ids) + len(t.completion_ids) for t in trajectories]
    n, width = len(trajectories), max(lengths)
    input_ids = np.full((n, width), pad_id, np.int64)
    attention = np.zeros((n, width), np.int64)
    loss_mask = np.zeros((n, width - 1), np.float32)
    behavior = np.zeros((n, width - 1), np.float32)
    versions = np.full((n, width - 1), -1, np.int64)
    for row, t in enumerate(trajectories):
        p, c = len(t.prompt_ids), len(t.completion_ids)
        input_ids[row, : p + c] = np.concatenate([t.prompt_ids, t.completion_ids])
        attention[row, : p + c] = 1
        # completion token j is the target at position p - 1 + j
        targets = slice(p - 1, p - 1 + c)
        loss_mask[row, targets] = t.loss_mask
        behavior[row, targets] = t.behavior_logprobs
        versions[row, targets] = t.policy_versions
    return TrainBatch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attention),
        loss_mask=torch.from_numpy(loss_mask),
        behavior_logprobs=torch.from_numpy(behavior),
        policy_versions=torch.from_numpy(versions),
        advantages=torch.from_numpy(seq_advantages[:, None] * loss_mask),
        lengths=torch.tensor(lengths),
    )
