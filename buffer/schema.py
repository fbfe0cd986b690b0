"""Trajectory and Group: the unit that rollout workers produce and the learner consumes.

Arrays are numpy so that the codec can write them as raw little-endian bytes;
per-token arrays of a trajectory all have the length of `completion_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from buffer.errors import SchemaError

NO_VERSION = -1  # policy_versions entry of a token the policy did not generate (env/tool tokens)


@dataclass
class Trajectory:
    prompt_ids: np.ndarray  # int32 [P]
    completion_ids: np.ndarray  # int32 [C]: for multi-turn, the interleaved sequence after the prompt
    loss_mask: np.ndarray  # uint8 [C]: 1 on policy-generated tokens, 0 on env/tool tokens
    behavior_logprobs: np.ndarray  # float32 [C]: logprob under the engine that sampled it (0 where mask is 0)
    policy_versions: np.ndarray  # int32 [C]: version that produced each token (NO_VERSION where mask is 0)
    reward: float  # the episode return: the sum of step_rewards
    reward_parts: dict[str, float] = field(default_factory=dict)  # each named part summed over the steps
    finish_reason: str = "stop"  # "stop" | "length" | "max_turns" (see actors/episode.py)
    num_turns: int = 1
    env_name: str = ""
    task_id: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    role: str = ""  # the player this trajectory belongs to in a multi-seat game ("" otherwise)
    step_rewards: list[float] = field(default_factory=list)  # one per env step that rewarded this role
    step_reward_parts: list[dict[str, float]] = field(default_factory=list)  # the parts of each step

    def __post_init__(self) -> None:
        self.prompt_ids = np.ascontiguousarray(self.prompt_ids, dtype=np.int32)
        self.completion_ids = np.ascontiguousarray(self.completion_ids, dtype=np.int32)
        self.loss_mask = np.ascontiguousarray(self.loss_mask, dtype=np.uint8)
        self.behavior_logprobs = np.ascontiguousarray(self.behavior_logprobs, dtype=np.float32)
        self.policy_versions = np.ascontiguousarray(self.policy_versions, dtype=np.int32)
        n = len(self.completion_ids)
        for name in ("loss_mask", "behavior_logprobs", "policy_versions"):
            array = getattr(self, name)
            if array.ndim != 1 or len(array) != n:
                raise SchemaError(f"{name} has shape {array.shape}, expected ({n},) like completion_ids")
        if self.prompt_ids.ndim != 1 or self.completion_ids.ndim != 1:
            raise SchemaError("prompt_ids and completion_ids must be 1-D")
        if not np.isfinite(self.reward):
            raise SchemaError(f"reward must be finite, got {self.reward}")

    @classmethod
    def checked(cls, **fields) -> "Trajectory":
        """A trajectory from fields already known to be valid (the codec checked each array's dtype,
        rank and length, and the reward): skips __post_init__, a third of decoding a group."""
        traj = cls.__new__(cls)
        traj.__dict__.update(fields)
        return traj

    @property
    def num_generated_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def generated_versions(self) -> np.ndarray:
        return self.policy_versions[self.loss_mask.astype(bool)]


@dataclass
class Group:
    """The G trajectories for one task instance: the GRPO unit and the replay item."""

    group_id: str  # "worker:sequence": idempotent across retried inserts
    task_id: str
    category: str
    created_at: float
    trajectories: list[Trajectory]
    priority: float = 1.0

    def __post_init__(self) -> None:
        if not self.group_id:
            raise SchemaError("group_id must be a non-empty string")
        if not self.trajectories:
            raise SchemaError(f"group {self.group_id} has no trajectories")
        if not (np.isfinite(self.priority) and self.priority >= 0):
            raise SchemaError(f"group {self.group_id} priority must be finite and >= 0, got {self.priority}")

    @property
    def rewards(self) -> np.ndarray:
        return np.array([t.reward for t in self.trajectories], dtype=np.float64)

    def _versions(self) -> np.ndarray:
        versions = [t.generated_versions() for t in self.trajectories]
        flat = np.concatenate(versions) if versions else np.empty(0, np.int32)
        return flat if len(flat) else np.zeros(1, np.int32)

    @property
    def max_policy_version(self) -> int:
        return self.policy_version_range()[1]

    def policy_version_range(self) -> tuple[int, int]:
        """(oldest, newest) version of the generated tokens, in one pass (the insert path needs both)."""
        versions = self._versions()
        return int(versions.min()), int(versions.max())


@dataclass
class SampledGroup:
    """A group as the replay hands it to the learner, with its sampling statistics."""

    group: Group
    probability: float  # P(i) under the selector, across all shards
    weight: float  # importance weight (N P)^-beta / max w over the sampled batch
    times_sampled: int
    shard: int
