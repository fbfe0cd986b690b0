"""ARPO's success store: per task, the last K successful rollouts; an all-failed group gets one.

Injection happens before insert, so the learner computes advantages on the patched group and
the replay stores it with its recomputed priority. Entries are single-trajectory payloads in a
Redis list per task (newest first, trimmed to K in the same transaction: FIFO).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import redis

from buffer.codec import decode_trajectory, encode_trajectory
from buffer.config import SuccessStoreConfig
from buffer.errors import CodecError
from buffer.schema import Group

log = logging.getLogger(__name__)


class SuccessStore:
    def __init__(self, config: SuccessStoreConfig, namespace: str) -> None:
        self.config = config
        self.namespace = namespace

    def key(self, task_id: str) -> str:
        return f"{self.namespace}:success:{task_id}"

    def is_all_failed(self, rewards: np.ndarray) -> bool:
        return float(np.std(rewards)) < self.config.failed_std and float(np.mean(rewards)) < self.config.failed_mean

    def inject(self, group: Group, conn: redis.Redis) -> tuple[Group, int | None]:
        """Replace the lowest-reward rollout of an all-failed group by the task's newest stored success.

        Returns the (possibly new) group and the index of the injected rollout, or None.
        """
        if not self.is_all_failed(group.rewards):
            return group, None
        payload = conn.lindex(self.key(group.task_id), 0)
        if payload is None:
            return group, None
        try:
            success = decode_trajectory(payload)
        except CodecError as e:
            log.warning("success store entry for task %s is unreadable, not injected: %s", group.task_id, e)
            return group, None
        index = int(np.argmin(group.rewards))
        trajectories = list(group.trajectories)
        trajectories[index] = success
        return dataclasses.replace(group, trajectories=trajectories), index

    def remember(self, group: Group, conn: redis.Redis, skip_index: int | None = None) -> int:
        """Store the group's own successes (not one it was given); returns how many."""
        payloads = [encode_trajectory(t) for i, t in enumerate(group.trajectories)
                    if i != skip_index and t.reward > self.config.success_reward]
        if payloads:
            key = self.key(group.task_id)
            with conn.pipeline(transaction=True) as pipe:
                pipe.lpush(key, *payloads)
                pipe.ltrim(key, 0, self.config.per_task - 1)
                pipe.execute()
        return len(payloads)
