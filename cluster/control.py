"""The run controller: one small named Ray actor per live run, the control plane's meeting point.

The driver creates it at start and reports a status snapshot after every learner step; `tidal status`
reads that snapshot and `tidal scale` sets the desired rollout-worker count, which the driver polls.
It is not detached: it dies with the driver, so a crashed run leaves no stale controller behind.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import ray

from cluster.errors import ControlError, RunNotFoundError
from cluster.submit import use_cluster_token


NAMESPACE = "tidal"
CONTROLLER_NAME = "tidal-controller"


@dataclass(frozen=True)
class RunStatus:
    """What `tidal status` shows: the latest snapshot the driver reported."""

    run_name: str
    run_dir: str
    total_steps: int
    desired_workers: int
    step: int = 0
    policy_version: int = 0
    workers: int = 0
    eval_accuracy: float | None = None  # the latest evaluation's, kept between eval steps
    eval_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the latest learner step's record
    replay: dict[str, float] = field(default_factory=dict)  # ReplayStats.to_dict()
    placement: list[dict] = field(default_factory=list)  # the live actors' placement.json entries
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


class RunController:
    def __init__(self, status: RunStatus, shard_urls: list[str], namespace: str,
                 fits: Callable[[int], None] | None = None) -> None:
        self._status = status
        self._replay = list(shard_urls), namespace
        self._fits = fits  # raises PlacementError when the run with N rollout workers exceeds the cluster

    def report(self, record: dict, workers: int, replay: dict[str, float] | None = None,
               placement: list[dict] | None = None) -> None:
        """Take one learner step's metrics record (it holds `step`, and `eval_accuracy` on eval steps)."""
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        evaluated = "eval_accuracy" in metrics
        self._status = replace(
            self._status, step=int(record["step"]), metrics=metrics, workers=workers,
            policy_version=int(metrics.get("policy_version", self._status.policy_version)),
            eval_accuracy=metrics["eval_accuracy"] if evaluated else self._status.eval_accuracy,
            eval_step=int(record["step"]) if evaluated else self._status.eval_step,
            replay=dict(replay) if replay is not None else self._status.replay,
            placement=list(placement) if placement is not None else self._status.placement, updated_at=time.time())

    def status(self) -> RunStatus:
        return self._status

    def scale(self, num_workers: int) -> int:
        """Set the desired rollout-worker count; returns the previous one."""
        if num_workers < 1:
            raise ValueError(f"rollout workers must be >= 1 (worker 0 also evaluates), got {num_workers}")
        previous = self._status.desired_workers
        if self._fits is not None and num_workers > previous:  # refused where `tidal scale` hears it; never a scale-down
            self._fits(num_workers)
        self._status = replace(self._status, desired_workers=num_workers)
        return previous

    def desired_workers(self) -> int:
        return self._status.desired_workers

    def replay_target(self) -> tuple[list[str], str]:
        """The run's shard URLs and table namespace, for observers (`tidal replay stats`)."""
        return self._replay


# max_concurrency: a slow `tidal status` never delays the driver's per-step report.
RemoteRunController = ray.remote(num_cpus=0, max_concurrency=4)(RunController)


def start_controller(status: RunStatus, shard_urls: list[str], namespace: str,
                     fits: Callable[[int], None] | None = None):
    """Create the run's controller (Ray must be initialised); fails if another run is live here."""
    try:
        return RemoteRunController.options(name=CONTROLLER_NAME, namespace=NAMESPACE).remote(
            status, shard_urls, namespace, fits)
    except ValueError as e:
        raise ControlError(f"another Tidal run is live on this Ray cluster (actor {CONTROLLER_NAME!r} in "
                           f"namespace {NAMESPACE!r} exists): stop it first or use another cluster") from e


REACH_TIMEOUT_S = 3.0


def _reachable(address: str) -> None:
    """A Ray address host:port must accept a TCP connection within seconds: ray.init itself keeps
    retrying an unreachable GCS for over a minute."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form ray.init resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as e:
        raise RunNotFoundError(f"no Ray cluster at {address}: {e.strerror or type(e).__name__} "
                               f"(within {REACH_TIMEOUT_S:.0f}s)") from e


def _check_gcs_address(address: str) -> None:
    """ray.init joins a cluster through its GCS: the dashboard URL that `tidal submit` takes cannot serve."""
    if address.startswith(("http://", "https://")):
        raise ControlError(f"--address {address} is a dashboard URL, which `tidal submit` takes; this command "
                           "joins the cluster itself: pass its GCS address HOST:PORT (`ray start --head` prints "
                           "it, port 6379 by default), or leave --address out on a node of the cluster ('auto')")


def connect(address: str | None) -> None:
    """Join the cluster at `address` (None: the one this machine started) unless already connected."""
    target = address or "auto"
    _check_gcs_address(target)
    if ray.is_initialized():
        return
    _reachable(target)
    use_cluster_token()  # a run's own cluster has Ray's token auth on: without the token every call is refused
    try:
        ray.init(address=target, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError) as e:
        raise RunNotFoundError(f"no Ray cluster reachable at {target!r}: is a run started (`tidal train`)? "
                               f"otherwise pass --address ({e})") from e


def find_controller(address: str | None = None):
    """The live run's controller handle."""
    connect(address)
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError as e:
        raise RunNotFoundError(f"no live Tidal run on the Ray cluster at {address or 'auto'!r} (no actor "
                               f"{CONTROLLER_NAME!r} in namespace {NAMESPACE!r})") from e
