"""The rollout fleet, supervised: workers are started without waiting for them, replaced when they
die, added and removed at the run's request, and handed out to whoever needs a ready one (evaluations).

A worker is a numbered slot that can have several incarnations. Starting one returns at once: it
joins (is `ready`) when its engine has warmed up, so a scale-up never pauses the learner. In async
mode each worker's `run()` call doubles as its heartbeat: it returns only when the worker is
stopped, so a finished call of a worker nobody stopped is a worker that died. Its groups in flight
were never acknowledged; the admission controller counts them as lost and frees their room (as it
does for a stopped worker that gave up draining at its deadline). A dead worker, or one that dies
warming up, is restarted unless its slot has used its restart budget, in which case the run stops
with a `WorkerCrashLoop` that names the worker and its last error. One that stopped because the
run's settings leave it nothing to do (`PromptsOverBudget`) stops the run at once: a replacement
would stop the same way.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from actors.rollout_worker import PromptsOverBudget, WorkerStopped
from cluster.errors import RunFailed
from cluster.scaling import RestartBudget, reconcile_workers

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0  # a stopping worker finishes and inserts its groups in flight within this


def worker_lost(error: BaseException) -> bool:
    """Whether a call failed because its worker is gone: the process died, or its engine thread
    ended (the actor lives on, unable to serve). Such a worker is for `replace_dead`."""
    return isinstance(error, ray.exceptions.RayActorError) or (
        isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, WorkerStopped))


def _cause(error: BaseException) -> BaseException:
    """The worker's own exception, not Ray's wrapping of it."""
    return error.cause if isinstance(error, ray.exceptions.RayTaskError) and error.cause else error


def failure_reason(error: BaseException) -> str:
    """`Type: last line` of what failed: the worker's own exception, not Ray's wrapping of it."""
    cause = _cause(error)
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


class WorkerCrashLoop(RunFailed):
    """A worker slot died more often than its restart budget allows."""


@dataclass
class Worker:
    slot: int
    name: str  # unique per incarnation (group ids start with it)
    handle: object
    ready_ref: object  # resolves when the engine has warmed up
    loop_ref: object | None = None  # async mode: its run() call
    ready: bool = False
    started_at: float = field(default_factory=time.time)


@dataclass
class Stopping:
    worker: Worker
    deadline: float


class WorkerPool:
    def __init__(self, start_worker: Callable[[int, str], object], admission, produce_continuously: bool,
                 budget: RestartBudget, on_ready: Callable[[Worker], None] = lambda w: None,
                 on_gone: Callable[[Worker], None] = lambda w: None) -> None:
        self._start_worker = start_worker  # (slot, name) -> actor handle
        self._on_ready, self._on_gone = on_ready, on_gone  # e.g. the placement record
        self.admission = admission
        self.produce_continuously = produce_continuously
        self.budget = budget
        self.workers: list[Worker] = []
        self._stopping: list[Stopping] = []
        self.restarts = 0
        self.lost_in_flight = 0
        self.last_errors: dict[str, str] = {}  # worker name -> why it died

    # -- size ------------------------------------------------------------------------------------
    def start(self, count: int) -> None:
        self.workers = reconcile_workers(self.workers, count, self._launch, self._stop)

    def wait_ready(self, timeout_s: float) -> list[str]:
        """Block until every worker started so far is ready (the run's start); returns check()'s notes."""
        return self._wait(lambda: all(w.ready for w in self.workers), "not every rollout worker was ready", timeout_s)

    def wait_for_one_ready(self, timeout_s: float) -> list[str]:
        """Block until at least one worker is ready; returns check()'s notes."""
        return self._wait(lambda: bool(self.ready), "no rollout worker was ready", timeout_s)

    def _wait(self, done: Callable[[], bool], failure: str, timeout_s: float) -> list[str]:
        """check() until `done()`: a worker that dies warming up is replaced, within its restart budget."""
        deadline = time.monotonic() + timeout_s
        notes = self.check()
        while not done():
            starting = [w.ready_ref for w in self.workers if not w.ready]
            if not starting or time.monotonic() >= deadline:
                raise RunFailed(f"{failure} within {timeout_s:.0f}s")
            ray.wait(starting, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            notes += self.check()
        return notes

    def resize(self, desired: int) -> bool:
        """Start or stop workers to match `desired` (newest stopped first); True if it changed anything."""
        if desired == len(self.workers):
            return False
        self.workers = reconcile_workers(self.workers, desired, self._launch, self._stop)
        return True

    def _launch(self, slot: int) -> Worker:
        name = f"w{slot}-{uuid.uuid4().hex[:6]}"
        handle = self._start_worker(slot, name)
        worker = Worker(slot, name, handle, ready_ref=handle.stats.remote())  # queued behind the warm-up
        if self.produce_continuously:
            worker.loop_ref = handle.run.remote()
        return worker

    def _stop(self, worker: Worker) -> None:
        worker.handle.stop.remote()
        self._stopping.append(Stopping(worker, time.monotonic() + STOP_TIMEOUT_S))

    # -- supervision -----------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Mark workers that warmed up, replace those that died, finish stopping ones; returns notes."""
        notes = []
        for worker in [w for w in self.workers if not w.ready]:
            if ray.wait([worker.ready_ref], timeout=0)[0]:
                try:
                    ray.get(worker.ready_ref)
                    worker.ready = True
                    self._on_ready(worker)
                except ray.exceptions.RayActorError as e:
                    notes.append(self._replace(worker, e))
        for worker in [w for w in self.workers if w.loop_ref is not None]:
            if ray.wait([worker.loop_ref], timeout=0)[0]:
                notes.append(self._replace(worker, self._why_loop_ended(worker)))
        self._reap_stopping()
        return notes

    def _why_loop_ended(self, worker: Worker) -> BaseException:
        try:
            ray.get(worker.loop_ref)
            return RuntimeError("its loop returned although it was not stopped")
        except ray.exceptions.RayError as e:
            return e

    def replace_dead(self, worker: Worker, error: BaseException) -> str:
        """For callers that saw a worker fail (sync mode, evaluation)."""
        return self._replace(worker, error)

    def _replace(self, dead: Worker, error: BaseException) -> str:
        if isinstance(_cause(error), PromptsOverBudget):  # the settings' fault: a replacement would stop the same way
            raise RunFailed(str(_cause(error))) from error
        reason = failure_reason(error)
        self.last_errors[dead.name] = reason
        self._on_gone(dead)
        lost = self._count_lost(dead)
        ray.kill(dead.handle, no_restart=True)
        if not self.budget.allow(dead.slot, time.monotonic()):
            raise WorkerCrashLoop(f"rollout worker {dead.name} (slot {dead.slot}) died {self.budget.max_restarts + 1} "
                                  f"times within {self.budget.window_s:.0f}s; its last error: {reason}")
        self.restarts += 1
        replacement = self._launch(dead.slot)
        self.workers[self.workers.index(dead)] = replacement
        return f"rollout worker {dead.name} died ({reason}); {lost} groups in flight lost; started {replacement.name}"

    def _count_lost(self, worker: Worker) -> int:
        """Free the admission room of the worker's groups in flight: gone with it, never to be acknowledged."""
        lost = ray.get(self.admission.worker_lost.remote(worker.name), timeout=CALL_TIMEOUT_S)
        self.lost_in_flight += lost
        return lost

    def _reap_stopping(self, force: bool = False) -> None:
        """End the stopping workers that finished, are past their deadline, or all of them (`force`).
        One that gave up its drain at the deadline leaves groups in flight, counted as lost."""
        for entry in list(self._stopping):
            finished = entry.worker.loop_ref is None or ray.wait([entry.worker.loop_ref], timeout=0)[0]
            if force or finished or time.monotonic() >= entry.deadline:
                ray.kill(entry.worker.handle, no_restart=True)
                self._stopping.remove(entry)
                self._on_gone(entry.worker)
                try:
                    self._count_lost(entry.worker)
                except (ray.exceptions.RayError, TimeoutError) as e:
                    if not force:
                        raise
                    # the run is ending (stop_all): the admission actor may be gone with it; the
                    # shutdown must not fail over a count nobody reads
                    log.warning("in-flight groups of %s not counted: %s", entry.worker.name, e)

    # -- work ------------------------------------------------------------------------------------
    @property
    def ready(self) -> list[Worker]:
        return [w for w in self.workers if w.ready]

    def stats(self) -> list[dict]:
        """The ready workers' counters (a worker that does not answer in time is skipped)."""
        refs = [(w, w.handle.stats.remote()) for w in self.ready]
        out = []
        for worker, ref in refs:
            try:
                out.append(ray.get(ref, timeout=CALL_TIMEOUT_S))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue  # the next check() replaces it if it died
        return out

    def stop_all(self, timeout_s: float) -> None:
        for worker in self.workers:
            self._stop(worker)
        self.workers = []
        deadline = time.monotonic() + timeout_s
        while self._stopping and time.monotonic() < deadline:
            self._reap_stopping()
            time.sleep(0.05)
        self._reap_stopping(force=True)

    def counts(self) -> dict[str, float]:
        return {"workers/alive": len(self.ready), "workers/starting": len(self.workers) - len(self.ready),
                "workers/restarts": self.restarts, "groups/lost_in_flight": self.lost_in_flight}
