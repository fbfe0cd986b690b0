"""Item selectors (Reverb's item_selectors): how a shard picks the groups it returns.

The drawing runs inside the shard's Lua sample script (buffer/lua/sample.lua), which branches
on the selector name; the registry validates names, documents them, and says whether groups
without a learning signal are stored at all (the table carries that to the insert script).
"""

from __future__ import annotations

from dataclasses import dataclass

from envs.registry import Registry


@dataclass(frozen=True)
class Selector:
    name: str
    doc: str
    stores_zero_signal: bool
    """False: a group whose rewards are all equal (priority 0) is acknowledged and not stored, as
    a zero-signal skip: the selector would never draw it, or would spend a batch slot on it."""


SELECTORS: Registry[Selector] = Registry("selector")
for selector in [
    Selector("prioritized", "P ~ p^alpha from the sum tree; p = 0 is never drawn", stores_zero_signal=False),
    Selector("uniform", "every stored group equally likely, priorities ignored", stores_zero_signal=True),
    Selector("fifo", "the oldest groups first (with max_times_sampled=1: a queue)", stores_zero_signal=True),
    Selector("lifo", "the newest groups first (with max_times_sampled=1: each group once, the freshest the learner "
                     "can get)", stores_zero_signal=False),
]:
    SELECTORS.register(selector.name)(selector)
