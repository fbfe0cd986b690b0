"""Admission control's window: groups waiting in the replay plus those being generated never exceed
(max_staleness + 1) learner steps' worth, whatever order workers, inserts and the learner run in."""

from __future__ import annotations

import numpy as np

from cluster.admission import AdmissionController
from envs import CurriculumConfig


class CountingReplay:
    def __init__(self) -> None:
        self.groups = 0
        self.reads = 0

    def size(self) -> int:
        self.reads += 1
        return self.groups


def test_a_group_inserted_by_another_worker_counts_against_the_next_grant():
    """Worker a's group lands in the replay and a's room is freed; worker b asks next. A size that b
    read before a's insert would have seen the freed room but not the group, and overshot."""
    replay = CountingReplay()
    admission = AdmissionController(4, 0, CurriculumConfig(), ["a"], seed=0, replay=replay, size_ttl_s=0)
    assert len(admission.admit("a", 4)) == 4
    replay.groups += 1  # a's first group is stored...
    admission.done("a", finished=1, stored=1)  # ...then a reports it
    assert admission.admit("b", 2) == []
    assert admission.totals()["in_flight"] == 3


def test_the_window_holds_under_random_interleavings():
    rng = np.random.default_rng(0)
    replay = CountingReplay()
    admission = AdmissionController(groups_per_step=4, max_staleness=1, curriculum=CurriculumConfig(),
                                    categories=["a"], seed=0, replay=replay, size_ttl_s=0)
    generating = {"w0": 0, "w1": 0, "w2": 0}
    for _ in range(2_000):
        worker = str(rng.choice(list(generating)))
        event = rng.integers(3)
        if event == 0:
            generating[worker] += len(admission.admit(worker, int(rng.integers(1, 5))))
        elif event == 1 and generating[worker]:
            generating[worker] -= 1
            stored = bool(rng.random() < 0.8)  # the rest: zero signal or duplicates, never stored
            replay.groups += stored
            admission.done(worker, finished=1, stored=int(stored))
        elif event == 2:
            replay.groups -= min(replay.groups, 4)  # a learner step
        assert replay.groups + sum(generating.values()) <= 8
    assert admission.totals()["admitted"] > 100


def test_the_size_is_read_once_per_ttl_and_groups_stored_since_count_against_the_window():
    """One actor answers every worker: a shard round trip per call would be its whole cost."""
    replay = CountingReplay()
    admission = AdmissionController(4, 0, CurriculumConfig(), ["a"], seed=0, replay=replay, size_ttl_s=3600)
    assert len(admission.admit("a", 2)) == 2
    replay.groups += 2  # both stored...
    admission.done("a", finished=2, stored=2)  # ...and reported: counted though the cached size predates them
    assert len(admission.admit("b", 4)) == 2 and replay.reads == 1
    admission.size_ttl_s = 0  # the next call reads again: the learner took both groups meanwhile
    replay.groups = 0
    assert len(admission.admit("b", 4)) == 2 and replay.reads == 2
