"""The consumption ledger: what became of every group the replay acknowledged.

The shard scripts keep it in the same atomic step as the data: an acknowledged group is counted
as `acked` (inserted, or refused as zero-signal, stale or from a rewound timeline), and once more
under the reason it left the table (left_<reason>); each time the learner trains on it, its entry
records the version. So acknowledged = left + buffered on every shard, and `unaccounted`, the
difference, must be 0 after any crash: it is the count of acknowledged groups that vanished.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table

LEFT_REASONS = ("zero_signal", "stale", "capacity", "max_times_sampled", "quarantined", "rewound")


@dataclass
class ShardLedger:
    index: int
    acked: int
    left: dict[str, int]  # reason -> groups that left the table for it
    buffered: int  # groups in the table now
    trained_groups: int  # groups trained on at least once
    trained_uses: int  # training uses over all groups
    times_trained: list[int] = field(default_factory=list)  # per acknowledged group

    @classmethod
    def from_counters(cls, index: int, ledger: dict[str, int], buffered: int,
                      entries: list[dict[str, str]]) -> "ShardLedger":
        left = {reason: ledger.get(f"left_{reason}", 0) for reason in LEFT_REASONS}
        return cls(index, ledger.get("acked", 0), left, buffered, ledger.get("trained_groups", 0),
                   ledger.get("trained_uses", 0), [int(entry.get("t", 0)) for entry in entries])

    @property
    def unaccounted(self) -> int:
        return self.acked - sum(self.left.values()) - self.buffered


@dataclass
class LedgerAudit:
    shards: list[ShardLedger]
    max_times_sampled: int  # the table's bound (0: unlimited)

    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.shards)

    def left(self, reason: str) -> int:
        return sum(s.left[reason] for s in self.shards)

    @property
    def most_times_trained(self) -> int:
        return max((t for s in self.shards for t in s.times_trained), default=0)

    @property
    def over_trained(self) -> int:
        """Groups trained on more often than max_times_sampled allows (must be 0)."""
        if self.max_times_sampled == 0:
            return 0
        return sum(t > self.max_times_sampled for s in self.shards for t in s.times_trained)

    def to_dict(self) -> dict[str, int]:
        out = {name: self.total(name) for name in ("acked", "trained_groups", "trained_uses", "buffered",
                                                    "unaccounted")}
        out |= {f"left_{reason}": self.left(reason) for reason in LEFT_REASONS}
        return out | {"most_times_trained": self.most_times_trained, "over_trained": self.over_trained}

    def render(self) -> Table:
        table = Table(title="replay ledger")
        columns = ["shard", "acknowledged", "trained", "buffered", *(f"left: {r}" for r in LEFT_REASONS),
                   "unaccounted"]
        for column in columns:
            table.add_column(column, justify="left" if column == "shard" else "right")
        rows = [(str(s.index), s.acked, s.trained_groups, s.buffered, *(s.left[r] for r in LEFT_REASONS),
                 s.unaccounted) for s in self.shards]
        totals = self.to_dict()
        rows.append(("total", totals["acked"], totals["trained_groups"], totals["buffered"],
                     *(totals[f"left_{r}"] for r in LEFT_REASONS), totals["unaccounted"]))
        for row in rows:
            table.add_row(*map(str, row))
        bound = self.max_times_sampled or "unlimited"
        table.caption = (f"training uses {totals['trained_uses']}; most uses of one group {self.most_times_trained} "
                         f"(max_times_sampled {bound}; over it: {self.over_trained})")
        return table
