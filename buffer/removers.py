"""Removers: which group leaves a full shard.

Eviction runs inside the shard's Lua insert script, which branches on the remover name; the
registry validates names and documents them.
"""

from __future__ import annotations

from dataclasses import dataclass

from envs.registry import Registry


@dataclass(frozen=True)
class Remover:
    name: str
    doc: str


REMOVERS: Registry[Remover] = Registry("remover")
REMOVERS.register("fifo")(Remover("fifo", "the oldest group"))
REMOVERS.register("lowest_priority")(Remover("lowest_priority", "the group with the lowest current priority"))
