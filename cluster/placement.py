"""Where each role's actors run: the resources they ask Ray for, placement groups, and the record of
where they landed.

Rollout workers ask for `num_gpus` each (fractions put several engines on one GPU); an engine
with `tensor_parallel_size` > 1 reserves a placement group of that many one-GPU bundles and its
worker runs in the first (vLLM's Ray executor places the other shards in the rest). The learner
ranks share one placement group, one bundle per rank, PACK or SPREAD, so that they are placed
together or not at all; they meet at rank 0's node address (learner_group.py). Before anything
is placed the run's total is checked against the cluster's, and every placement group must be
ready within `timeout_s`: a request the cluster cannot meet fails with the resource it lacks,
instead of waiting forever. `placement.json` in the run directory records, for every actor, its
role, node, the resources it asked for, the GPU ids Ray assigned and the CUDA_VISIBLE_DEVICES
it saw.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.errors import RunFailed


class PlacementError(RunFailed):
    """The cluster cannot place what the run asks for; the message names the resource."""


class RoleResources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per actor; a rollout worker may take a fraction (several engines share a GPU)."""
    resources: dict[str, float] = {}
    """Custom Ray resources per actor (e.g. {"a100": 1})."""

    def request(self, gpus: float | None = None) -> dict[str, float]:
        """As a Ray resource dict (a bundle)."""
        bundle = {"CPU": self.num_cpus, "GPU": self.num_gpus if gpus is None else gpus, **self.resources}
        return {name: amount for name, amount in bundle.items() if amount > 0}


class PlacementConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rollout: RoleResources = RoleResources()
    """Per rollout worker (for tensor_parallel_size > 1: per engine shard, one GPU each)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs of each rollout engine (vLLM tensor parallelism); > 1 reserves a placement group per worker."""
    learner: RoleResources = RoleResources()
    """Per learner rank."""
    learner_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    timeout_s: float = Field(60.0, gt=0)
    """Bound on placing a group of actors."""

    def worker_bundles(self) -> list[dict[str, float]]:
        if self.tensor_parallel_size == 1:
            return [self.rollout.request()]
        return [self.rollout.request(gpus=1.0) for _ in range(self.tensor_parallel_size)]


def check_capacity(config: PlacementConfig, num_workers: int, num_ranks: int) -> None:
    """Fail at once when the whole run asks for more of a resource than the cluster has in total."""
    asked: Counter[str] = Counter()
    for bundle in config.worker_bundles() * num_workers + [config.learner.request()] * num_ranks:
        asked.update(bundle)
    total = ray.cluster_resources()
    short = [f"{amount:g} {name} (the cluster has {total.get(name, 0):g})" for name, amount in sorted(asked.items())
             if amount > total.get(name, 0) + 1e-9]
    if short:
        raise PlacementError(f"the run asks for more than the cluster has: {', '.join(short)}; "
                             f"{num_workers} rollout workers x {config.worker_bundles()}, "
                             f"{num_ranks} learner ranks x {config.learner.request()}")


def ready_group(bundles: list[dict[str, float]], strategy: str, timeout_s: float, what: str) -> PlacementGroup:
    """A placement group that is placed within `timeout_s`, or PlacementError naming what is missing."""
    group = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise PlacementError(f"{what} could not be placed within {timeout_s:.0f}s: asked {bundles} ({strategy}); "
                             f"available now {ray.available_resources()}")
    return group


def in_group(group: PlacementGroup, bundle: int) -> dict[str, Any]:
    """Actor options that put it into `bundle` of `group` (its child tasks too)."""
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=bundle,
                                                                    placement_group_capture_child_tasks=True)}


def where(actor) -> dict[str, Any]:
    """Run inside an actor (`handle.__ray_call__.remote(where)`): where it runs and what it got."""
    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "node_address": ray.util.get_node_ip_address(),
            "gpu_ids": [str(g) for g in context.get_accelerator_ids().get("GPU", [])],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}


class PlacementRecord:
    """placement.json: one entry per actor the run started, rewritten whenever one starts or ends
    (an actor that ended stays, with `alive: false`: replaced workers show where they ran)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}

    def add(self, role: str, name: str, handle, resources: dict[str, float], timeout_s: float = 60.0) -> None:
        self.entries[name] = {"role": role, "name": name, "resources": resources, "alive": True,
                              **ray.get(handle.__ray_call__.remote(where), timeout=timeout_s)}
        self._write()

    def ended(self, name: str) -> None:
        if name in self.entries:
            self.entries[name]["alive"] = False
            self._write()

    def live(self) -> list[dict]:
        return [entry for entry in self.entries.values() if entry["alive"]]

    def _write(self) -> None:
        self.path.write_text(json.dumps(list(self.entries.values()), indent=1))
