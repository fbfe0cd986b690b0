"""Resizing the rollout fleet: the pure decision of which workers to start and which to stop.

Kept free of Ray so that the rule is unit-testable with plain callables.
"""

from __future__ import annotations

from typing import Callable, TypeVar

Handle = TypeVar("Handle")


def reconcile_workers(current: list[Handle], desired: int, start_worker: Callable[[int], Handle],
                      stop_worker: Callable[[Handle], None]) -> list[Handle]:
    """The worker list after moving from `len(current)` to `desired` workers.

    New workers get the next indices (`start_worker(len(current))`, ...); removal stops the newest
    first, so worker 0 (the evaluator) and the longest-warmed engines stay. `current` is not modified.
    """
    if desired < 0:
        raise ValueError(f"desired worker count must be >= 0, got {desired}")
    workers = list(current)
    while len(workers) < desired:
        workers.append(start_worker(len(workers)))
    while len(workers) > desired:
        stop_worker(workers.pop())
    return workers


class RestartBudget:
    """At most `max_restarts` restarts of one worker slot within any `window_s` seconds: a worker
    that dies now and then is replaced, one that keeps crashing stops the run."""

    def __init__(self, max_restarts: int, window_s: float) -> None:
        if max_restarts < 0 or window_s <= 0:
            raise ValueError(f"max_restarts={max_restarts} must be >= 0 and window_s={window_s} > 0")
        self.max_restarts = max_restarts
        self.window_s = window_s
        self._restarts: dict[int, list[float]] = {}

    def allow(self, slot: int, now: float) -> bool:
        """Whether slot may restart at `now`; records the restart when it may."""
        recent = [t for t in self._restarts.get(slot, []) if now - t < self.window_s]
        if len(recent) >= self.max_restarts:
            self._restarts[slot] = recent
            return False
        self._restarts[slot] = recent + [now]
        return True
