"""The weight channel: the latest published policy version, its weights, and rollout admission control.

A tiny Ray actor. The learner publishes `(version, [weights_ref])` (the ref is wrapped in a list so
Ray passes the reference instead of resolving it); rollout workers poll `version()` between rounds
and fetch the weights only when they are newer.

Admission control (AReaL's bound on off-policyness, counted in groups): a worker may start a round
only while the groups waiting in the replay plus those being generated stay within
`(max_staleness + 1)` learner steps' worth. The learner consumes one step's worth per version, so
a group waits at most `max_staleness` versions; the replay's own staleness bound evicts the rest.
Counting what the replay holds (not what was ever produced) keeps the bound exact when groups are
skipped, evicted or reused.
"""

from __future__ import annotations

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
        self._in_flight = 0  # groups admitted but not yet inserted

    def publish(self, version: int, weights_ref: list) -> None:
        if version <= self._version and self._weights:
            raise ValueError(f"published version {version} is not newer than {self._version}")
        self._version, self._weights = version, weights_ref

    def version(self) -> int:
        return self._version

    def latest(self) -> tuple[int, list]:
        return self._version, self._weights

    def admit(self, num_groups: int, buffered: int) -> bool:
        """Reserve room for `num_groups` new groups, given `buffered` groups waiting in the replay."""
        if buffered + self._in_flight + num_groups > (self._max_staleness + 1) * self._groups_per_step:
            return False
        self._in_flight += num_groups
        return True

    def done(self, num_groups: int) -> None:
        """The admitted groups were inserted (or dropped): they no longer count as in flight."""
        self._in_flight = max(0, self._in_flight - num_groups)
