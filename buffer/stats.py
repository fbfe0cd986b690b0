"""Replay statistics: per-shard counters from the Lua side plus the client's own, and a table."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from rich.table import Table

PER_SHARD_KEY = re.compile(r"^replay/shard\d+/")  # to_dict()'s per-shard keys (the rest are service totals)
EVICTION_REASONS = ("capacity", "stale", "max_times_sampled", "quarantined", "rewound")


@dataclass
class ShardStats:
    index: int
    address: str  # host:port, never the password
    up: bool
    size: int = 0
    priority_mass: float = 0.0  # sum of p^alpha over the shard's groups
    inserts: int = 0
    samples: int = 0
    deletes: int = 0
    evictions: dict[str, int] = field(default_factory=dict)  # reason -> count
    zero_signal_skips: int = 0
    quarantined: int = 0
    learner_version: int = 0
    staleness_histogram: list[int] = field(default_factory=list)  # [age 0..max_staleness, beyond]
    ledger: dict[str, int] = field(default_factory=dict)  # acked, left_<reason>, trained_groups, trained_uses

    @classmethod
    def from_counters(cls, index: int, address: str, counters: dict[str, int], size: int, mass: float,
                      learner_version: int, histogram: list[int], ledger: dict[str, int]) -> "ShardStats":
        return cls(index, address, True, size, mass, counters.get("inserts", 0), counters.get("samples", 0),
                   counters.get("deletes", 0), {r: counters.get(f"evicted_{r}", 0) for r in EVICTION_REASONS},
                   counters.get("zero_signal_skips", 0), counters.get("quarantined", 0), learner_version, histogram,
                   ledger)


@dataclass
class ClientCounters:
    """What this client process saw (the shards cannot know these)."""

    rerouted_inserts: int = 0  # inserts that went to another shard because theirs was down
    shard_down_events: int = 0
    success_injections: int = 0
    delayed_training_reports: int = 0  # training uses held back while their shard was down (sent later)


@dataclass
class ReplayStats:
    shards: list[ShardStats]
    client: ClientCounters

    def total(self, name: str) -> int | float:
        return sum(getattr(s, name) for s in self.shards)

    def to_dict(self) -> dict[str, float]:
        """Flat metric keys, e.g. replay/size, replay/shard0/size, replay/evictions/stale."""
        out: dict[str, float] = {}
        for name in ("size", "priority_mass", "inserts", "samples", "zero_signal_skips", "quarantined"):
            out[f"replay/{name}"] = self.total(name)
        for reason in EVICTION_REASONS:
            out[f"replay/evictions/{reason}"] = sum(s.evictions.get(reason, 0) for s in self.shards)
        out["replay/shards_up"] = sum(s.up for s in self.shards)
        for name in sorted({k for s in self.shards for k in s.ledger}):
            out[f"replay/ledger/{name}"] = sum(s.ledger.get(name, 0) for s in self.shards)
        for name, value in asdict(self.client).items():
            out[f"replay/client/{name}"] = value
        for s in self.shards:
            prefix = f"replay/shard{s.index}"
            out[f"{prefix}/up"] = int(s.up)
            out[f"{prefix}/size"] = s.size
            out[f"{prefix}/priority_mass"] = s.priority_mass
            for age, count in enumerate(s.staleness_histogram):
                out[f"{prefix}/staleness/{age}"] = count
        return out


def render_stats_table(stats: ReplayStats) -> Table:
    """A rich table, one row per shard and a total row (for `tidal replay stats` / `tidal status`)."""
    table = Table(title="replay")
    for column in ("shard", "up", "size", "mass", "inserts", "samples", "evicted", "zero-skips",
                   "quarantined", "staleness (0..max, beyond)"):
        table.add_column(column, justify="left" if column in ("shard", "up") else "right")
    for s in stats.shards:
        table.add_row(f"{s.index} {s.address}", "yes" if s.up else "DOWN", str(s.size), f"{s.priority_mass:.4g}",
                      str(s.inserts), str(s.samples), str(sum(s.evictions.values())), str(s.zero_signal_skips),
                      str(s.quarantined), " ".join(map(str, s.staleness_histogram)))
    table.add_row("total", f"{sum(s.up for s in stats.shards)}/{len(stats.shards)}", str(stats.total("size")),
                  f"{stats.total('priority_mass'):.4g}", str(stats.total("inserts")), str(stats.total("samples")),
                  str(sum(sum(s.evictions.values()) for s in stats.shards)), str(stats.total("zero_signal_skips")),
                  str(stats.total("quarantined")), "", end_section=True)
    c = stats.client
    table.caption = (f"rerouted inserts {c.rerouted_inserts}, shard down events {c.shard_down_events}, "
                     f"success injections {c.success_injections}, training reports delayed by a down shard "
                     f"{c.delayed_training_reports}")
    return table
