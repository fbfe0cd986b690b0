"""Item selectors (Reverb's item_selectors): how a shard picks the groups it returns.

The drawing runs inside the shard's Lua sample script (buffer/lua/sample.lua), which branches
on the selector name; the registry validates names and documents them.
"""

from __future__ import annotations

from dataclasses import dataclass

from envs.registry import Registry


@dataclass(frozen=True)
class Selector:
    name: str
    doc: str


SELECTORS: Registry[Selector] = Registry("selector")
SELECTORS.register("prioritized")(Selector("prioritized", "P ~ p^alpha from the sum tree; p = 0 is never "
                                                      "drawn (and not stored: a zero-signal skip)"))
SELECTORS.register("uniform")(Selector("uniform", "every stored group equally likely, priorities ignored"))
SELECTORS.register("fifo")(Selector("fifo", "the oldest groups first (with max_times_sampled=1: a queue)"))
SELECTORS.register("lifo")(Selector("lifo", "the newest groups first (with max_times_sampled=1: each group once, "
                                            "the freshest the learner can get); zero-signal groups are not "
                                            "stored, as under prioritized"))
