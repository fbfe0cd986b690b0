"""Env calls off the engine's thread, each with a wall-clock limit.

The episode loop submits every env call (reset, step) here and collects results as they come,
so a slow tool delays only its own episode and never the engine. A call past its limit is
answered with `EnvCallTimeout` and abandoned: Python cannot stop a thread, so its thread may stay
stuck in user code. Those lost threads are counted, and once half of the pool is lost a fresh
pool takes over (the stuck threads are left to finish or hang on their own).

An env that is pure computation (the demo's arithmetic: microseconds a call) can be called
inline instead: on the caller's thread, at submit, its answer handed out by the next poll like
any other. A thread hand-off costs more than such a call, and the loop pays it twice an
episode; an inline call has no wall-clock limit, so tools, sandboxes and user reward code
stay on the threads.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections.abc import Callable
from typing import Any, Hashable

log = logging.getLogger(__name__)


class EnvCallTimeout(TimeoutError):
    """An env call did not return within its limit."""


class EnvCalls:
    def __init__(self, timeout_s: float, max_threads: int = 32) -> None:
        if timeout_s <= 0 or max_threads < 2:
            raise ValueError(f"timeout_s={timeout_s} must be > 0 and max_threads={max_threads} >= 2")
        self.timeout_s = timeout_s
        self.max_threads = max_threads
        self._pool = self._new_pool()
        self._calls: dict[cf.Future, tuple[Hashable, float]] = {}  # future -> (tag, deadline)
        self._answered: list[tuple[Hashable, Any]] = []  # inline calls, until the next poll
        self._lost_in_pool = 0
        self.lost_threads = 0  # threads abandoned in a call past its limit, over the loop's life

    def _new_pool(self) -> cf.ThreadPoolExecutor:
        return cf.ThreadPoolExecutor(self.max_threads, thread_name_prefix="env-call")

    def submit(self, tag: Hashable, fn: Callable[..., Any], *args: Any, inline: bool = False) -> None:
        if inline:
            try:
                self._answered.append((tag, fn(*args)))
            except Exception as e:  # answered like a thread's failure: the loop ends the episode
                self._answered.append((tag, e))
            return
        self._calls[self._pool.submit(fn, *args)] = (tag, time.monotonic() + self.timeout_s)

    @property
    def pending(self) -> int:
        return len(self._calls) + len(self._answered)

    def poll(self, wait_s: float = 0.0) -> list[tuple[Hashable, Any]]:
        """(tag, result) of the calls that finished, waiting up to `wait_s` for the first one
        (not at all when an inline call has answered); the result is an exception for a call that
        raised or ran past its limit."""
        results, self._answered = self._answered, []
        if not self._calls:
            return results
        now = time.monotonic()
        earliest = min(deadline for _, deadline in self._calls.values())
        wait_s = 0.0 if results else min(wait_s, earliest - now)
        done, _ = cf.wait(self._calls, timeout=max(0.0, wait_s), return_when=cf.FIRST_COMPLETED)
        for future in done:
            tag, _ = self._calls.pop(future)
            error = future.exception()
            results.append((tag, error if error is not None else future.result()))
        now = time.monotonic()
        for future in [f for f, (_, deadline) in self._calls.items() if deadline <= now]:
            tag, _ = self._calls.pop(future)
            results.append((tag, EnvCallTimeout(f"env call exceeded {self.timeout_s}s")))
            if not future.cancel():  # a call still queued never starts; a running one leaves its thread behind
                self._abandoned()
        return results

    def _abandoned(self) -> None:
        self.lost_threads += 1
        self._lost_in_pool += 1
        if self._lost_in_pool * 2 >= self.max_threads:
            log.warning("%d env calls hung past %ss in this pool: starting a fresh pool", self._lost_in_pool,
                        self.timeout_s)
            self._pool.shutdown(wait=False, cancel_futures=False)
            self._pool = self._new_pool()
            self._lost_in_pool = 0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
