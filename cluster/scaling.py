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
