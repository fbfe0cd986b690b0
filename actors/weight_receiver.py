"""A rollout worker's side of the collective weight backend (buffer/weight_transport.py).

A thread of the worker hosts the rendezvous store of its pair group with the learner's rank 0,
registers its address with the weight channel, and receives each version: header, then every
bucket, into fresh tensors. Only a version that arrived whole is offered to the engine thread
(`newer` / `fetch`, like the object-store subscriber), so an engine never serves a mix of two
versions. When the learner goes away (its rank 0 died, or sends nothing past the group's timeout)
the half-received version is dropped and the worker registers again for the learner that follows.
Anything else that ends the thread (no manifest within its bound, the channel actor gone) is
raised by the next `newer`, on the engine thread: a worker must not go on serving its first
weights unseen while the staleness bound evicts all it makes.
"""

from __future__ import annotations

import logging
import threading
import time

import ray
import torch

from actors.weights import FETCH_TIMEOUT_S, WeightFetchError
from buffer.ports import free_port
from buffer.weight_transport import HEADER, TensorSpec, broadcast, empty_bucket, pair_group, plan, unpack

log = logging.getLogger(__name__)


class CollectiveReceiver:
    def __init__(self, channel, name: str, bucket_bytes: int, timeout_s: float, backend: str = "gloo") -> None:
        self._channel = channel
        self.name = name
        self.bucket_bytes, self.timeout_s, self.backend = bucket_bytes, timeout_s, backend
        self.head = (0, 0)  # (epoch, version) the engine holds
        self._complete: tuple[tuple[int, int], dict[str, torch.Tensor]] | None = None
        self._lock = threading.Lock()
        self._failure: BaseException | None = None  # what ended the receiving thread
        self._closed = threading.Event()
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, name=f"{name}-weights", daemon=True)
        self._thread.start()

    @property
    def version(self) -> int:
        return self.head[1]

    def newer(self, force: bool = False) -> bool:
        with self._lock:
            if self._failure is not None:
                raise WeightFetchError(f"{self.name}: the weight receiver stopped: "
                                       f"{type(self._failure).__name__}: {self._failure}") from self._failure
            return self._complete is not None and self._complete[0] != self.head

    def fetch(self) -> tuple[tuple[int, int], dict[str, torch.Tensor]]:
        with self._lock:
            return self._complete

    def loaded(self, head: tuple[int, int]) -> None:
        self.head = head

    def close(self, wait_s: float = 0.0) -> bool:
        """Stop receiving and registering: the thread ends at its next bounded wait (a group's timeout,
        a channel call). Returns whether it ended within `wait_s`."""
        self._closed.set()
        self._thread.join(timeout=wait_s)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        try:
            self._receive_versions()
        except BaseException as e:  # the thread ends here: say so now, and to the engine thread
            log.error("%s: the weight receiver stopped: %s: %s", self.name, type(e).__name__, e)
            with self._lock:
                self._failure = e

    def _receive_versions(self) -> None:
        specs = self._manifest()
        buckets = plan(specs, self.bucket_bytes)
        while not self._closed.is_set():
            try:
                group = self._connect()
                while not self._closed.is_set():
                    self._receive(group, specs, buckets)
            except (RuntimeError, TimeoutError) as e:  # the learner went away: wait for the next one
                if not self._closed.is_set():
                    log.warning("%s: weight group closed (%s); registering again", self.name, str(e).splitlines()[0])
                    self._closed.wait(1.0)

    def _manifest(self) -> list[TensorSpec]:
        deadline = time.monotonic() + FETCH_TIMEOUT_S * 10
        while time.monotonic() < deadline and not self._closed.is_set():
            specs = ray.get(self._channel.manifest.remote(), timeout=FETCH_TIMEOUT_S)
            if specs is not None:
                return [TensorSpec(name, tuple(shape), dtype) for name, shape, dtype in specs]
            self._closed.wait(0.5)
        if self._closed.is_set():
            return []  # closed while waiting: nothing to receive (the loop above does not start)
        raise TimeoutError("the learner published no weight manifest")

    def _connect(self):
        host, port = ray.util.get_node_ip_address(), free_port("")
        ray.get(self._channel.register_peer.remote(self.name, host, port), timeout=FETCH_TIMEOUT_S)
        group, self._store = pair_group(host, port, 1, self.timeout_s, self.backend)  # the store lives with the group
        self.connections += 1
        return group

    def _receive(self, group, specs: list[TensorSpec], buckets: list[list[int]]) -> None:
        header = torch.empty(HEADER, dtype=torch.int64)
        broadcast(group, header).wait()  # bounded by the group's timeout: the learner sends heartbeats
        epoch, version, count = header.tolist()
        if count == 0:
            return  # a heartbeat
        if count != len(buckets):
            raise RuntimeError(f"version {version} has {count} buckets, the manifest makes {len(buckets)}")
        state: dict[str, torch.Tensor] = {}
        for bucket in buckets:
            flat = empty_bucket(specs, bucket)
            broadcast(group, flat).wait()
            state.update(unpack(flat, specs, bucket))
        with self._lock:
            self._complete = ((epoch, version), state)
