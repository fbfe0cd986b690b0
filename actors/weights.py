"""The rollout side of the weight channel: notice newer weights and fetch them, within bounds.

A published policy is identified by (epoch, version). The version counts learner updates; the
epoch grows when the learner is restored from a checkpoint, so weights of an earlier version that
replace a lost timeline are still new to a worker that held later ones.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import ray
import torch

FETCH_TIMEOUT_S = 60.0  # the channel is a tiny actor and the weights a local object: far above normal


class WeightFetchError(RuntimeError):
    """The weight channel or the published weights could not be reached in time."""


class WeightSubscriber:
    def __init__(self, channel, poll_every_s: float = 0.02) -> None:
        self._channel = channel  # a WeightChannel actor handle
        self.head = (0, 0)  # (epoch, version) of the weights the engine holds; (0, 0): the initial checkpoint
        self._poll_every_s = poll_every_s
        self._next_poll = 0.0
        self._pending: tuple[int, int] | None = None

    @property
    def version(self) -> int:
        return self.head[1]

    def newer(self, force: bool = False) -> bool:
        """Whether newer weights were published (asks the channel at most every poll_every_s, unless forced)."""
        if self._pending is None and (force or time.monotonic() >= self._next_poll):
            self._next_poll = time.monotonic() + self._poll_every_s
            head = tuple(_get(self._channel.head.remote(), "the weight channel's head"))
            # Any other head: a newer version, or version 0 of a new epoch (a learner restored without
            # a checkpoint rewinds to the initial weights, which a worker on the lost timeline must load).
            # Before the first publish the channel's head is (0, 0), the initial weights a worker holds.
            if head != self.head:
                self._pending = head
        return self._pending is not None

    def fetch(self) -> tuple[tuple[int, int], dict[str, torch.Tensor]]:
        """The latest published weights and their (epoch, version); mark them held with `loaded`."""
        epoch, version, refs = _get(self._channel.latest.remote(), "the weight channel's latest weights")
        return (epoch, version), _as_tensors(_get(refs[0], f"the weights of version {version}"))

    def loaded(self, head: tuple[int, int]) -> None:
        self.head = head
        self._pending = None

    def close(self, wait_s: float = 0.0) -> bool:
        """Nothing runs in the background here (the collective receiver's `close` stops its thread)."""
        return True


def _as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tensors over the object store's arrays, without a copy. The arrays are read-only, which
    torch warns about: the engines only read them, copying each into a parameter of their own."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {name: torch.from_numpy(array) for name, array in arrays.items()}


def _get(ref, what: str):
    try:
        return ray.get(ref, timeout=FETCH_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError as e:
        raise WeightFetchError(f"{what} did not arrive within {FETCH_TIMEOUT_S}s") from e
