"""How weights travel from the learner's rank 0 to a rollout worker in the collective backend: the
contract both sides share (it lives here, with the other contracts between the two sides).

Each worker and the learner's rank 0 form a process group of two (`pair_group`): the worker hosts
the rendezvous store, the learner joins it. A version goes over it as a header (epoch, version,
number of buckets), broadcast from rank 0, then the buckets. A header with no buckets is a
heartbeat: the learner sends one when it has had nothing to send for a while, so that a worker
waiting for the next version notices a dead learner within the group's timeout.

A manifest lists every tensor's name, shape and dtype in a fixed order; `plan` cuts it into
buckets of consecutive tensors of one dtype, each at most `bucket_bytes` (a tensor larger than
that is a bucket of its own). Both sides compute the same plan from the same manifest, so a
bucket travels as one flat tensor and nothing but the numbers goes over the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from math import prod
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

HEADER = 3  # int64: epoch, version, number of buckets (0: a heartbeat)


class WeightSyncConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["object_store", "collective"] = "object_store"
    """object_store: the learner puts the weights in Ray's object store, each worker fetches them;
    collective: the learner's rank 0 broadcasts them to each worker over a process group of two
    (gloo on CPU, NCCL on GPU), in buckets."""
    bucket_mb: float = Field(64.0, gt=0)
    """Collective: the largest bucket of consecutive tensors sent as one."""
    timeout_s: float = Field(60.0, gt=0)
    """Collective: bound on every rendezvous and send; a peer past it is dropped."""

    @property
    def bucket_bytes(self) -> int:
        return int(self.bucket_mb * 2**20)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # a torch dtype's name, e.g. "float32"

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def manifest(named: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in named.items()]


def plan(specs: list[TensorSpec], bucket_bytes: int) -> list[list[int]]:
    """Indices into `specs`, one list per bucket."""
    buckets: list[list[int]] = []
    size = 0
    for index, spec in enumerate(specs):
        nbytes = spec.numel * spec.torch_dtype.itemsize
        same_dtype = buckets and specs[buckets[-1][0]].dtype == spec.dtype
        if same_dtype and size + nbytes <= bucket_bytes:
            buckets[-1].append(index)
            size += nbytes
        else:
            buckets.append([index])
            size = nbytes
    return buckets


def pack(tensors: list[torch.Tensor], bucket: list[int]) -> torch.Tensor:
    """One flat tensor holding the bucket's tensors (a copy: the originals may change afterwards)."""
    return torch.cat([tensors[i].detach().reshape(-1) for i in bucket])


def empty_bucket(specs: list[TensorSpec], bucket: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.empty(sum(specs[i].numel for i in bucket), dtype=specs[bucket[0]].torch_dtype, device=device)


def unpack(flat: torch.Tensor, specs: list[TensorSpec], bucket: list[int]) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) views into `flat`."""
    out, offset = [], 0
    for i in bucket:
        spec = specs[i]
        out.append((spec.name, flat[offset:offset + spec.numel].view(spec.shape)))
        offset += spec.numel
    return out


def pair_group(host: str, port: int, rank: int, timeout_s: float, backend: str = "gloo"):
    """The process group of the learner's rank 0 (rank 0, joins) and one worker (rank 1, hosts the
    store at host:port). Blocks until both sides are there, at most `timeout_s`."""
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, 2, rank == 1, timeout, wait_for_workers=False)
    prefixed = dist.PrefixStore("tidal-weights", store)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, 2, options), store
    return dist.ProcessGroupGloo(prefixed, rank, 2, timeout), store


def broadcast(group, tensor: torch.Tensor):
    """Rank 0's tensor into every rank's (in place); returns the Work to wait on."""
    options = dist.BroadcastOptions()
    options.rootRank = 0
    return group.broadcast([tensor], options)
