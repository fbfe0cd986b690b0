"""The weight channel: the latest published policy, its (epoch, version) and where its weights are.

A tiny Ray actor. The learner publishes `(version, [weights_ref])` (the ref is wrapped in a list so
Ray passes the reference instead of resolving it); rollout workers poll `head()` between engine
steps and fetch the weights only when it changed. The version counts learner updates and only
grows, except when the learner is restored from a checkpoint after a failure: that publish passes
`rewind=True` and starts a new epoch, so workers that held weights of the lost timeline load the
restored ones although their version number is lower.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class WeightChannel:
    def __init__(self) -> None:
        self._epoch = 0
        self._version = 0
        self._weights: list = []  # [ObjectRef] of the latest state dict, empty before the first publish

    def publish(self, version: int, weights_ref: list, rewind: bool = False) -> None:
        if rewind:
            self._epoch += 1
        elif version <= self._version and self._weights:
            raise ValueError(f"published version {version} is not newer than {self._version} (a restored "
                             "checkpoint publishes with rewind=True)")
        self._version, self._weights = version, weights_ref

    def head(self) -> tuple[int, int]:
        return self._epoch, self._version

    def latest(self) -> tuple[int, int, list]:
        return self._epoch, self._version, self._weights
