"""Held-out evaluations beside training.

At an evaluation point the driver starts one on a ready rollout worker and goes on training; the
evaluation is collected when it ends and merged into the record of the step it ended at, with the
policy version it measured (`eval_policy_version`: the worker loads the newest weights first and
holds them until the evaluation ends). So the learner never waits for an evaluation: in async mode
it trains on meanwhile, and a time to a target accuracy counts when the run knew it.

A worker lost during an evaluation (its process died, or its engine thread failed) is replaced
and the evaluation started again on another one, a bounded number of times; an evaluation that
does not end within its bound stops the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import ray

from cluster.config import EvalConfig, RunConfig
from cluster.errors import RunFailed
from cluster.worker_pool import Worker, WorkerPool, failure_reason, worker_lost

log = logging.getLogger(__name__)
ATTEMPTS = 3  # workers an evaluation is tried on before the run stops


@dataclass
class _Running:
    what: str  # which evaluation ("step 20"), for errors
    calls: list[tuple[str, Worker, object]]  # (env suffix, worker, ref of its evaluate() call)
    deadline: float
    attempts: int = 1


class Evaluations:
    """At most one evaluation runs at a time; `start` waits for the previous one first."""

    def __init__(self, cfg: RunConfig, workers: WorkerPool, timeout_s: float) -> None:
        self.cfg, self.workers, self.timeout_s = cfg.eval, workers, timeout_s
        self.envs = cfg.eval_envs()
        self._running: _Running | None = None

    def start(self, what: str) -> dict:
        """Start an evaluation at the newest weights; returns the previous one's record if it had to be
        waited for ({} otherwise)."""
        record = self.wait()
        self._running = _Running(what, self._submit(), time.monotonic() + self.timeout_s)
        return record

    def poll(self) -> dict:
        """The record of the running evaluation if it has ended ({} if none has)."""
        if self._running is None:
            return {}
        refs = [ref for _, _, ref in self._running.calls]
        ended, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return self.wait() if len(ended) == len(refs) else {}

    def wait(self) -> dict:
        """Block (within the bound) until the running evaluation ends; its record ({} if none runs)."""
        running = self._running
        if running is None:
            return {}
        while True:
            try:
                results = {suffix: ray.get(ref, timeout=max(0.0, running.deadline - time.monotonic()))
                           for suffix, _, ref in running.calls}
                self._running = None
                return eval_record(self.cfg, results)
            except ray.exceptions.GetTimeoutError as e:
                raise self._overdue(running) from e
            except ray.exceptions.RayError as e:
                if not worker_lost(e):
                    raise
                running = self._retry(running, e)

    def busy(self) -> list[Worker]:
        """The workers whose evaluate() call is still running: they load no new weights until it ends."""
        return [worker for worker, _ in self._pending()]

    def wait_for_a_worker(self) -> None:
        """Block until a busy worker's evaluate() call ends; past the evaluation's bound the run stops."""
        refs = [ref for _, ref in self._pending()]
        if refs and not ray.wait(refs, timeout=max(0.0, self._running.deadline - time.monotonic()))[0]:
            raise self._overdue(self._running)

    def _pending(self) -> list[tuple[Worker, object]]:
        if self._running is None:
            return []
        return [(worker, ref) for _, worker, ref in self._running.calls if not ray.wait([ref], timeout=0)[0]]

    def _overdue(self, running: _Running) -> RunFailed:
        self._running = None
        return RunFailed(f"the evaluation of {running.what} did not end within {self.timeout_s:.0f}s")

    def discard(self) -> None:
        """Forget the running evaluation (its weights belong to a timeline the run went back from)."""
        self._running = None

    def _retry(self, running: _Running, error: ray.exceptions.RayError) -> _Running:
        for _, worker, ref in running.calls:
            if worker in self.workers.workers and _died(ref):
                log.warning("evaluation: %s", self.workers.replace_dead(worker, error))
        if running.attempts >= ATTEMPTS:
            self._running = None
            raise RunFailed(f"the evaluation of {running.what} failed on {ATTEMPTS} rollout workers in a row; "
                            f"the last: {failure_reason(error)}") from error
        self._running = _Running(running.what, self._submit(), running.deadline, running.attempts + 1)
        return self._running

    def _submit(self) -> list[tuple[str, Worker, object]]:
        """One evaluate() call per evaluation env, spread over the ready workers."""
        ready = self.workers.ready
        if not ready:
            self.workers.wait_for_one_ready(self.timeout_s)
            ready = self.workers.ready
        temperatures = tuple(temperature for temperature, _ in _variants(self.cfg))
        return [(suffix, worker, worker.handle.evaluate.remote(temperatures, env))
                for (env, suffix), worker in zip(self.envs, _cycle(ready, len(self.envs)))]


def eval_record(cfg: EvalConfig, results: dict[str, dict]) -> dict:
    """Each evaluation env's measures (keyed by its suffix): sampled (T=1) as `eval_<measure><suffix>`,
    greedy as `eval_<measure><suffix>_greedy`, and the policy version they measured as
    `eval_policy_version<suffix>` (each env runs on its own worker, which may have loaded a newer one)."""
    record = {}
    for suffix, result in results.items():
        record[f"eval_policy_version{suffix}"] = result["policy_version"]
        for temperature, greedy in _variants(cfg):
            record |= {f"eval_{name}{suffix}{greedy}": value for name, value in result[str(temperature)].items()}
    return record


def _variants(cfg: EvalConfig) -> tuple[tuple[float, str], ...]:
    """(temperature, key suffix) of each pass: sampled (T=1) always, greedy unless `eval.greedy` is off."""
    return ((1.0, ""), (0.0, "_greedy")) if cfg.greedy else ((1.0, ""),)


def _died(ref) -> bool:
    """Whether the call behind `ref` has ended with its worker gone."""
    if not ray.wait([ref], timeout=0)[0]:
        return False
    try:
        ray.get(ref)
        return False
    except ray.exceptions.RayError as e:
        return worker_lost(e)


def _cycle(workers: list[Worker], count: int) -> list[Worker]:
    return [workers[i % len(workers)] for i in range(count)]
