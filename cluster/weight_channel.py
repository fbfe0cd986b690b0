"""The weight channel: the latest published policy version, its weights, and rollout admission control.

A tiny Ray actor. The learner publishes `(version, [weights_ref])` (the ref is wrapped in a list so
Ray passes the reference instead of resolving it); rollout workers poll `version()` between rounds
and fetch the weights only when they are newer. Admission control follows AReaL's bound on
off-policyness: workers may produce at most `max_staleness + 1` learner steps' worth of groups
ahead of the learner, so no group is consumed more than `max_staleness` versions after its policy.
"""

from __future__ import annotations

import time

import ray


@ray.remote(num_cpus=0)
class WeightChannel:
    def __init__(self, groups_per_step: int, max_staleness: int) -> None:
        if groups_per_step <= 0 or max_staleness < 0:
            raise ValueError(f"groups_per_step={groups_per_step} must be > 0 and max_staleness={max_staleness} >= 0")
        self._groups_per_step = groups_per_step
        self._max_staleness = max_staleness
        self._version = 0
        self._weights: list = []  # [ObjectRef] of the latest state dict, empty before the first publish
        self._admitted_groups = 0
        self._published_at = time.time()

    def publish(self, version: int, weights_ref: list) -> None:
        if version <= self._version and self._weights:
            raise ValueError(f"published version {version} is not newer than {self._version}")
        self._version, self._weights, self._published_at = version, weights_ref, time.time()

    def version(self) -> int:
        return self._version

    def latest(self) -> tuple[int, list]:
        return self._version, self._weights

    def admit(self, num_groups: int) -> bool:
        """Reserve room for `num_groups` new groups unless that would run too far ahead of the learner."""
        allowed = (self._version + self._max_staleness + 1) * self._groups_per_step
        if self._admitted_groups + num_groups > allowed:
            return False
        self._admitted_groups += num_groups
        return True

    def release(self, num_groups: int) -> None:
        """Give back admitted groups that were never inserted (a failed round), so they can be produced again."""
        self._admitted_groups = max(0, self._admitted_groups - num_groups)
