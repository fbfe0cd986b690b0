"""A rollout worker whose engine thread ends answers every caller still waiting, those whose jobs
were still queued included (an evaluation queued as the thread failed used to wait out its whole
bound), and refuses new jobs. Runs `_shutdown` on a worker built without an engine: it touches only
the job queue, the waiters and the parts it closes (engine loop, replay, weight receiver)."""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading

import pytest

from actors.rollout_worker import RolloutWorker, WorkerStopped, _EpisodesJob


class _Closable:
    closed = False

    def close(self) -> None:
        self.closed = True


def worker_whose_engine_failed() -> RolloutWorker:
    worker = object.__new__(RolloutWorker)  # no engine, no Ray: _shutdown needs none of them
    worker.name, worker._failure = "w0", RuntimeError("the replay table has other settings")
    worker._jobs, worker._accepting, worker._post_lock = queue.Queue(), True, threading.Lock()
    worker._weight_waiters, worker._episode_jobs, worker._quota = [], [], None
    worker.loop, worker.replay, worker.weights = _Closable(), _Closable(), _Closable()
    worker._stopped = threading.Event()
    return worker


def test_queued_and_taken_jobs_are_all_answered_with_the_reason_and_new_ones_refused():
    worker = worker_whose_engine_failed()
    taken_weights = cf.Future()
    worker._weight_waiters.append(((0, 3), taken_weights))
    queued_weights, queued_quota = cf.Future(), cf.Future()
    queued_episodes = _EpisodesJob([], None)
    for job in [("produce", None), ("weights", ((0, 4), queued_weights)), ("episodes", queued_episodes),
                ("quota", (8, queued_quota)), ("stop", 0.0)]:
        worker._post(job)

    worker._shutdown()

    for future in (taken_weights, queued_weights, queued_episodes.future, queued_quota):
        with pytest.raises(WorkerStopped, match="w0 stopped: the replay table has other settings"):
            future.result(timeout=0)
    assert worker._jobs.empty() and worker._stopped.is_set() and worker.loop.closed and worker.replay.closed
    assert worker.weights.closed  # a stopped worker registers no more for weights
    with pytest.raises(WorkerStopped, match="w0 has stopped"):
        worker._post(("weights", ((0, 5), cf.Future())))
