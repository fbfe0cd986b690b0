"""Admission control: how much the rollout workers may generate, and on which task categories.

A tiny Ray actor, one per run. A worker asks for room before it starts groups; the controller
grants it while the groups waiting in the replay plus those being generated stay within
`(max_staleness + 1)` learner steps' worth (AReaL's bound on off-policyness, counted in groups).
The learner consumes one step's worth per version, so a group waits at most `max_staleness`
versions; the replay's own staleness bound evicts the rest. Counting what the replay holds (not
what was ever produced) keeps the bound exact when groups are skipped, evicted or reused. The
controller reads the replay's size itself, inside `admit`: calls to an actor run one at a time, so
a group is counted in the replay or in flight (or briefly in both) when the next grant is made. A
size read by the worker before its call could miss groups inserted meanwhile by others, whose room
`done` had already freed, and the window overshot. The size is read at most every SIZE_TTL_S, plus
the groups reported stored since (one serial actor answers every worker: a read per call would
put a round trip to every shard on each of them, and a hung shard would hold them all).

Every grant carries the category of the task to draw, chosen by the run's curriculum, so that all
workers sample from one distribution. The curriculum learns, after every learner step, from the
mean |A| of each category's groups: those the learner trained on, and those the workers made
without any learning signal (all rewards equal: never stored, so never trained on), which count
0. Its state travels with checkpoints (`state` / `load_state`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Protocol

import numpy as np
import ray

from envs import CurriculumConfig, make_curriculum


SIZE_TTL_S = 0.05


class ReplaySize(Protocol):
    def size(self) -> int: ...


class AdmissionController:
    def __init__(self, groups_per_step: int, max_staleness: int, curriculum: CurriculumConfig,
                 categories: list[str], seed: int, replay: ReplaySize, size_ttl_s: float = SIZE_TTL_S) -> None:
        if groups_per_step <= 0 or max_staleness < 0:
            raise ValueError(f"groups_per_step={groups_per_step} must be > 0 and max_staleness={max_staleness} >= 0")
        self.window = (max_staleness + 1) * groups_per_step
        self.replay = replay  # groups waiting in the replay: ReplayClient.size
        self.size_ttl_s = size_ttl_s
        self._size, self._size_read_at, self._stored_since_read = 0, -float("inf"), 0
        self.curriculum = make_curriculum(curriculum, categories)
        self.rng = np.random.default_rng(seed)
        self.in_flight: Counter[str] = Counter()  # worker -> groups admitted, not yet inserted or dropped
        self.counts: Counter[str] = Counter()  # admitted, stored, lost_in_flight (over the run)
        self.zero_signal: Counter[str] = Counter()  # category -> zero-signal groups since the last update

    def admit(self, worker: str, num_groups: int) -> list[str | None]:
        """Room for up to `num_groups` new groups: one category per admitted group (None: any task)."""
        room = self.window - self._buffered() - sum(self.in_flight.values())
        granted = max(0, min(num_groups, room))
        self.in_flight[worker] += granted
        self.counts["admitted"] += granted
        return [self.curriculum.sample_category(self.rng) for _ in range(granted)]

    def _buffered(self) -> int:
        """Groups in the replay: a read within size_ttl_s, plus those stored since (counted even if the
        read saw them already, or the learner has taken them since: the bound errs on the safe side)."""
        now = time.monotonic()
        if now - self._size_read_at >= self.size_ttl_s:
            self._size, self._size_read_at, self._stored_since_read = self.replay.size(), now, 0
        return self._size + self._stored_since_read

    def done(self, worker: str, finished: int, stored: int, zero_signal: dict[str, int] | None = None) -> None:
        """`finished` admitted groups ended, `stored` of them were stored by the replay; `zero_signal`:
        category -> groups without a learning signal."""
        self.in_flight[worker] = max(0, self.in_flight[worker] - finished)
        self.counts["stored"] += stored
        self._stored_since_read += stored
        self.zero_signal.update(zero_signal or {})

    def worker_lost(self, worker: str) -> int:
        """A worker died: its groups in flight are lost (never acknowledged). Returns how many."""
        lost = self.in_flight.pop(worker, 0)
        self.counts["lost_in_flight"] += lost
        return lost

    def update_curriculum(self, trained: dict[str, tuple[float, float]]) -> dict[str, float]:
        """`trained`: category -> (mean |A|, groups) of the learner's last step. Zero-signal groups made
        since the last update join with |A| = 0. Returns the categories' new probabilities."""
        signals = {}
        for category in set(trained) | set(self.zero_signal):
            mean, groups = trained.get(category, (0.0, 0.0))
            signals[category] = mean * groups / (groups + self.zero_signal[category])
        self.zero_signal.clear()
        if signals:
            self.curriculum.update(signals)
        return self.curriculum.probabilities()

    def probabilities(self) -> dict[str, float]:
        return self.curriculum.probabilities()

    def totals(self) -> dict[str, int]:
        return {**self.counts, "in_flight": sum(self.in_flight.values())}

    def state(self) -> dict:
        return {"curriculum": self.curriculum.state()}

    def load_state(self, state: dict) -> None:
        self.curriculum.load_state(state["curriculum"])


RemoteAdmissionController = ray.remote(num_cpus=0)(AdmissionController)
