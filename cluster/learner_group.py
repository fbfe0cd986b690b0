"""The learner ranks of a run, seen from the driver: one step at a time, with a bound on each wait.

A dead rank (its process killed, out of memory) surfaces as `LearnerFailure` naming it; a step
that does not finish within the watchdog's time as `LearnerStalled`, with what every rank was
doing. `restart()` replaces every rank (a process group cannot take a new member mid-run) and
`restore()` loads the latest checkpoint into them, or, when there is none yet, starts from the
model the run began with: both are version numbers the replay and the weight channel rewind to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import ray

from cluster.checkpoints import CheckpointConfig

log = logging.getLogger(__name__)
SUMMED_OVER_RANKS = ("learner_tokens_per_s", "groups")  # per-rank counts; everything else is already global
START_TIMEOUT_S = 600.0  # DeepSpeed initialisation, a model load and the process group's rendezvous
CALL_TIMEOUT_S = 60.0
SUPERVISE_EVERY_S = 1.0  # while a step waits longer than this, the driver's other duties run between waits


class LearnerFailure(RuntimeError):
    """A learner rank died; the message names it."""

    def __init__(self, rank: int, cause: BaseException) -> None:
        super().__init__(f"learner rank {rank} failed: {type(cause).__name__}: {str(cause).splitlines()[0]}")
        self.rank = rank


class LearnerStalled(TimeoutError):
    """No learner step completed within the watchdog's time; the message says what each rank was doing."""


def merge_rank_metrics(per_rank: list[dict]) -> dict:
    """One record from the ranks' metrics: counts summed, a category's mean |A| weighted by its
    groups on each rank (a rank with one group must not count as much as one with nine), the rest
    averaged."""
    merged = {}
    for key in dict.fromkeys(k for m in per_rank for k in m):  # a category may be on some ranks only
        present = [m for m in per_rank if isinstance(m.get(key), (int, float))]
        if not present:
            continue
        if key in SUMMED_OVER_RANKS or key.startswith("signal_groups/"):
            merged[key] = sum(m[key] for m in present)
        elif key.startswith("signal/"):
            weights = [m[f"signal_groups/{key[len('signal/'):]}"] for m in present]
            merged[key] = sum(m[key] * w for m, w in zip(present, weights)) / max(sum(weights), 1)
        else:
            merged[key] = sum(m[key] for m in present) / len(present)
    return merged


class LearnerGroup:
    def __init__(self, make_rank, num_ranks: int, checkpoint_dir: Path, checkpoints: CheckpointConfig) -> None:
        self._make_rank = make_rank  # rank -> actor handle, placed and configured by the driver
        self.num_ranks = num_ranks
        self.checkpoint_dir = checkpoint_dir
        self.checkpoints = checkpoints
        self.ranks: list = []
        self.restarts = 0
        self._in_flight: list | None = None  # the ranks' refs of an update begun and not yet collected

    def start(self) -> None:
        """Start every rank and wait until they have met."""
        self.launch()
        self.join()

    def launch(self) -> None:
        """Create the rank actors without waiting for them (their processes start meanwhile)."""
        self.ranks = [self._make_rank(rank) for rank in range(self.num_ranks)]

    def join(self) -> None:
        """Wait until the launched ranks meet at rank 0's node address, on a port free there."""
        address, port = self._gather([self.ranks[0].rendezvous_address.remote()], START_TIMEOUT_S, "starting")[0]
        self._gather([r.setup.remote(address, port) for r in self.ranks], START_TIMEOUT_S, "joining the process group")

    def restart(self) -> None:
        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
        self.drop_in_flight()
        self.restarts += 1
        self.start()

    def begin_step(self) -> None:
        """Start the next update on every rank without waiting for it; `step` collects it."""
        self._in_flight = [r.train_step.remote() for r in self.ranks]

    def step(self, watchdog_s: float, while_waiting: Callable[[], None] | None = None) -> dict:
        """One update on every rank (the one begun, if any); the record merges the ranks' metrics.
        `while_waiting` runs every SUPERVISE_EVERY_S of a long wait (a learner waiting for groups
        must not hide a rollout fleet that died meanwhile); what it raises ends the wait."""
        if self._in_flight is None:
            self.begin_step()
        # Forgotten only once collected: an interrupt during the wait leaves it for settle(), which
        # records it before the final checkpoint (the checkpoint holds the update either way).
        record = merge_rank_metrics(self._gather(self._in_flight, watchdog_s, "training a step", while_waiting))
        self._in_flight = None
        return record

    def settle(self, watchdog_s: float) -> dict | None:
        """Finish an update begun and not collected (before a final checkpoint): its record, or None."""
        return None if self._in_flight is None else self.step(watchdog_s)

    def drop_in_flight(self) -> None:
        """Give up collecting the update in flight (it failed or outlasted its bound)."""
        self._in_flight = None

    def save(self, step: int, driver_state: dict) -> float:
        """Checkpoint `step` (every rank); returns the seconds it took."""
        if self._in_flight is not None:
            raise RuntimeError(f"cannot checkpoint step {step}: a later update is in flight (settle it first)")
        started = time.monotonic()
        self._gather([r.save_checkpoint.remote(str(self.checkpoint_dir), f"step{step}", driver_state,
                                               self.checkpoints.keep) for r in self.ranks],
                     self.checkpoints.timeout_s, f"saving the checkpoint of step {step}")
        return time.monotonic() - started

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / "latest").is_file()

    def restore(self) -> dict:
        """Load the latest checkpoint into every rank (after `start` or `restart`) and publish it as a
        rewind; returns its client state ({"policy_version": 0, "driver": {}} without a checkpoint:
        the ranks then hold the model the run started from)."""
        state = {"policy_version": 0, "driver": {}}
        if self.has_checkpoint():
            state = self._gather([r.load_checkpoint.remote(str(self.checkpoint_dir)) for r in self.ranks],
                                 START_TIMEOUT_S, "loading the checkpoint")[0]
        self.publish(rewind=True)
        return state

    def publish(self, rewind: bool = False) -> None:
        self._gather([r.publish.remote(rewind) for r in self.ranks], CALL_TIMEOUT_S, "publishing weights")

    def call_rank0(self, method: str, *args, timeout_s: float = CALL_TIMEOUT_S):
        return self._gather([getattr(self.ranks[0], method).remote(*args)], timeout_s, method)[0]

    def activities(self) -> list[str]:
        """What each rank reports doing (or why it cannot say), within a few seconds."""
        refs = [r.activity.remote() for r in self.ranks]
        out = []
        for rank, ref in enumerate(refs):
            try:
                out.append(f"rank {rank}: {ray.get(ref, timeout=5)}")
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
                out.append(f"rank {rank}: no answer ({type(e).__name__})")
        return out

    def _gather(self, refs: list, timeout_s: float, what: str, while_waiting: Callable[[], None] | None = None
                ) -> list:
        """Every rank's result, or the first failure: a dead rank, or the bound running out."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(refs, num_returns=len(refs),
                                      timeout=left if while_waiting is None else min(left, SUPERVISE_EVERY_S))
            if not pending or while_waiting is None or time.monotonic() >= deadline:
                break
            while_waiting()
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as e:
                raise LearnerFailure(refs.index(ref), e) from e
        if pending:
            raise LearnerStalled(f"learner ranks did not finish {what} within {timeout_s:.0f}s: "
                                 + "; ".join(self.activities()))
        return ray.get(refs)

    def kill(self) -> None:
        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
