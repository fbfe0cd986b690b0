"""The rollout side of the weight channel: fetch newer weights when the learner has published them."""

from __future__ import annotations

import ray
import torch


class WeightSubscriber:
    def __init__(self, channel) -> None:
        self._channel = channel  # a WeightChannel actor handle
        self.version = 0  # version of the weights the engine holds; 0 = the initial checkpoint

    def learner_version(self) -> int:
        return ray.get(self._channel.version.remote())

    def poll(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """Newer weights and their version, or None when the engine is up to date."""
        if self.learner_version() <= self.version:
            return None
        version, refs = ray.get(self._channel.latest.remote())
        if not refs or version <= self.version:
            return None
        return version, ray.get(refs[0])

    def admit(self, num_groups: int, buffered: int) -> bool:
        return ray.get(self._channel.admit.remote(num_groups, buffered))

    def done(self, num_groups: int) -> None:
        ray.get(self._channel.done.remote(num_groups))
