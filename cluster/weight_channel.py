"""The weight channel: the latest published policy, its (epoch, version) and where its weights are.

A tiny Ray actor. The learner publishes `(version, [weights_ref])` (the ref is wrapped in a list so
Ray passes the reference instead of resolving it); rollout workers poll `head()` between engine
steps and fetch the weights only when it changed. The version counts learner updates and only
grows, except when the learner is restored from a checkpoint after a failure: that publish passes
`rewind=True` and starts a new epoch, so workers that held weights of the lost timeline load the
restored ones although their version number is lower.

With the collective backend no weights go through the object store (the ref list is empty): the
channel is then the directory of the learner's pair groups. Workers register the address where
they host their group's store (`register_peer`), the driver reports dead ones (`peer_gone`), and
the learner's broadcaster takes both (`peer_changes`). Only a worker's latest address is kept: a
worker registers a new one each time its group times out (every `timeout_s` while no learner is
up), and a new learner must not try the dead ones first. The learner publishes the weights'
manifest once (`set_manifest`), which the workers read to lay out what they receive.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class WeightChannel:
    def __init__(self) -> None:
        self._epoch = 0
        self._version = 0
        self._weights: list = []  # [ObjectRef] of the latest state dict (object store backend)
        self._published = False
        self._manifest: list | None = None
        self._new_peers: dict[str, tuple[str, int]] = {}  # worker name -> its latest address
        self._gone_peers: list[str] = []

    def publish(self, version: int, weights_ref: list, rewind: bool = False) -> tuple[int, int]:
        """Announce `version` (its weights in `weights_ref`, or none with the collective backend);
        returns the new head (epoch, version)."""
        if rewind:
            self._epoch += 1
        elif version <= self._version and self._published:
            raise ValueError(f"published version {version} is not newer than {self._version} (a restored "
                             "checkpoint publishes with rewind=True)")
        self._version, self._weights, self._published = version, weights_ref, True
        return self._epoch, self._version

    def head(self) -> tuple[int, int]:
        return self._epoch, self._version

    def set_manifest(self, specs: list) -> None:
        self._manifest = specs

    def manifest(self) -> list | None:
        return self._manifest

    def register_peer(self, name: str, host: str, port: int) -> None:
        self._new_peers[name] = (host, port)

    def peer_gone(self, name: str) -> None:
        self._new_peers.pop(name, None)
        self._gone_peers.append(name)

    def peer_changes(self) -> tuple[list[str], list[tuple[str, str, int]]]:
        """(workers gone, workers registered at their latest address) since the last call; a worker
        that registered and then went is only in the first."""
        gone, new = self._gone_peers, self._new_peers
        self._gone_peers, self._new_peers = [], {}
        return gone, [(name, host, port) for name, (host, port) in new.items()]

    def latest(self) -> tuple[int, int, list]:
        return self._epoch, self._version, self._weights
