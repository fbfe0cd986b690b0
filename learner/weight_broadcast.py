"""The learner's side of the collective weight backend: rank 0 sends every new version to each
rollout worker over a process group of two (buffer/weight_transport.py).

Why pairs, not one group of the learner and every worker (as verl and OpenRLHF form theirs): a
worker that dies, hangs or joins mid-run concerns its own pair only. A new worker registers its
rendezvous address with the weight channel and is connected and sent the latest version without
the others noticing; a dead one fails its own sends (or is reported gone by the driver) and is
dropped, and the next version goes to the rest without waiting for it. The cost is that rank 0
sends each bucket once per worker instead of once per group; the sends run concurrently.

Sending runs on a thread of its own: `publish` packs the new weights into buckets (a copy, so the
next optimizer step may change the parameters at once) and returns; only the newest unsent
version is kept, so a slow worker makes others skip versions, never wait for it. Every wait is
bounded by `timeout_s`; a failed peer is named in the log and dropped. Joining a new worker's group
runs on a thread of its own too, and only at the worker's latest address: an address may be dead
(the worker died, or timed out and registered again), and trying it must not hold up the others.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import ray
import torch

from buffer.weight_transport import broadcast, manifest, pack, pair_group, plan

log = logging.getLogger(__name__)
HEARTBEAT_S = 10.0


class WeightBroadcaster:
    def __init__(self, channel, names_and_tensors: dict[str, torch.Tensor], bucket_bytes: int, timeout_s: float,
                 backend: str = "gloo") -> None:
        self.channel = channel
        self.specs = manifest(names_and_tensors)
        self.buckets = plan(self.specs, bucket_bytes)
        self.timeout_s, self.backend = timeout_s, backend
        ray.get(channel.set_manifest.remote([(s.name, s.shape, s.dtype) for s in self.specs]), timeout=timeout_s)
        self._peers: dict[str, object] = {}  # worker name -> its pair group
        self._latest: tuple[tuple[int, int], list[torch.Tensor]] | None = None  # what new peers get first
        self._pending: tuple[tuple[int, int], list[torch.Tensor]] | None = None
        self._joining: dict[str, tuple[str, int]] = {}  # worker name -> the address being joined
        self._joined: list[tuple[str, tuple[str, int], object]] = []  # (name, address, group or why not)
        self._wake = threading.Condition()
        self._stopped = False
        self.failures: dict[str, str] = {}  # worker name -> why it was dropped
        self._thread = threading.Thread(target=self._serve, name="weight-broadcast", daemon=True)
        self._thread.start()

    def publish(self, head: tuple[int, int], named_weights: dict[str, torch.Tensor]) -> None:
        """Queue (epoch, version) for every connected worker; returns once the weights are copied."""
        tensors = [named_weights[spec.name] for spec in self.specs]
        packed = [pack(tensors, bucket) for bucket in self.buckets]
        with self._wake:
            self._pending = (head, packed)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _serve(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stopped or self._pending is not None or self._joined,
                                    timeout=HEARTBEAT_S)
                if self._stopped:
                    return
                job, self._pending = self._pending, None
                joined, self._joined = self._joined, []
            self._update_peers()
            newcomers = self._adopt(joined)
            if job is not None:
                self._latest = job
                self._send(list(self._peers), *job)  # the newcomers included
                continue
            if newcomers and self._latest is not None:
                self._send(newcomers, *self._latest)
            self._send(list(self._peers), None, [])  # heartbeat

    def _update_peers(self) -> None:
        """Drops the workers gone and starts joining the new ones."""
        gone, new = ray.get(self.channel.peer_changes.remote(), timeout=self.timeout_s)
        for name in gone:
            self._joining.pop(name, None)
            if self._peers.pop(name, None) is not None:
                log.info("weights: %s left", name)
        for name, host, port in new:
            self._joining[name] = (host, port)
            threading.Thread(target=self._join, args=(name, host, port), name=f"weight-join-{name}",
                             daemon=True).start()

    def _join(self, name: str, host: str, port: int) -> None:
        """On a thread of its own: hands the group (or why there is none) to the serving thread."""
        try:
            outcome = pair_group(host, port, 0, self.timeout_s, self.backend)[0]
        except (RuntimeError, TimeoutError) as e:  # its store is gone (the worker died or registered again)
            outcome = f"could not join its group at {host}:{port}: {e}"
        with self._wake:
            self._joined.append((name, (host, port), outcome))
            self._wake.notify()

    def _adopt(self, joined: list[tuple[str, tuple[str, int], object]]) -> list[str]:
        """Takes the groups joined at a worker's latest address as peers; returns their names."""
        newcomers = []
        for name, address, outcome in joined:
            if self._joining.get(name) != address:
                continue  # the worker registered again since, or left
            del self._joining[name]
            if isinstance(outcome, str):
                self._drop(name, outcome)
            else:
                self._peers[name] = outcome
                newcomers.append(name)
        return newcomers

    def _send(self, names: list[str], head: tuple[int, int] | None, packed: list[torch.Tensor]) -> None:
        """One version (or a heartbeat) to each peer in `names`, concurrently."""
        epoch, version = head if head is not None else (-1, -1)
        header = torch.tensor([epoch, version, len(packed)], dtype=torch.int64)
        for tensor in [header, *packed]:
            works = {}
            for name in names:
                if name in self._peers:
                    works[name] = broadcast(self._peers[name], tensor)
            for name, work in works.items():
                try:
                    work.wait(timedelta(seconds=self.timeout_s))
                except RuntimeError as e:
                    self._drop(name, str(e).splitlines()[0])

    def _drop(self, name: str, why: str) -> None:
        self._peers.pop(name, None)
        self.failures[name] = why
        log.warning("weights: dropped %s: %s", name, why)
