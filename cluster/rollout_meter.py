"""Rollout counters of the whole run, from the workers' own counters.

Each worker reports cumulative counters (groups stored, tokens generated, episodes by finish
reason, episode errors by env and exception type). The meter keeps the latest report of every
worker the run ever had, so that totals never drop when a worker stops or dies, and turns the
totals into the per-step record: rates since the previous record, and the counts.
"""

from __future__ import annotations

import time
from collections import Counter

RATES = {"groups": "groups_per_s", "generated_tokens": "rollout_tokens_per_s"}
NOT_SUMMED = ("policy_version", "groups_in_flight", "weight_sync_last_s")  # per-worker states, not counts


class RolloutMeter:
    def __init__(self) -> None:
        self._latest: dict[str, dict] = {}  # worker name -> its latest stats
        self._previous: dict[str, tuple[dict, float]] = {}  # worker name -> (stats, time) of the update before
        self._updated = time.time()
        self._last: tuple[Counter, float] = (Counter(), time.time())

    def update(self, stats: list[dict]) -> None:
        now = time.time()
        for report in stats:
            if report["name"] in self._latest:
                self._previous[report["name"]] = self._latest[report["name"]], self._updated
            self._latest[report["name"]] = report
        self._updated = now

    def per_worker(self) -> dict[str, dict[str, float]]:
        """Each worker that reported twice: its rates between its last two reports, its last weight sync."""
        out = {}
        for name, (before, then) in self._previous.items():
            latest, elapsed = self._latest[name], max(self._updated - then, 1e-9)
            out[name] = {"tokens_per_s": (latest.get("generated_tokens", 0) - before.get("generated_tokens", 0)) / elapsed,
                         "groups_per_s": (latest.get("groups", 0) - before.get("groups", 0)) / elapsed,
                         "weight_sync_s": latest.get("weight_sync_last_s", 0.0)}
        return out

    def totals(self) -> Counter:
        totals: Counter = Counter()
        for report in self._latest.values():
            for key, value in report.items():
                if key == "episode_errors":
                    totals.update({f"episode_errors/{name}": count for name, count in value.items()})
                elif isinstance(value, (int, float)) and key not in NOT_SUMMED:
                    totals[key] += value
        return totals

    def record(self) -> dict[str, float]:
        """Rates since the previous call, and the run's counts (`episode_errors/<env>/<type>`,
        `episodes/<finish reason>`, ...)."""
        totals, now = self.totals(), time.time()
        last, last_time = self._last
        self._last = totals, now
        elapsed = max(now - last_time, 1e-9)
        record = {rate: (totals[key] - last[key]) / elapsed for key, rate in RATES.items()}
        for key, value in totals.items():
            if key.startswith("finish/"):
                record[f"episodes/{key[len('finish/'):]}"] = value
            elif key.startswith("episode_errors/") or key in ("dropped_groups", "env_threads_lost"):
                record[key] = value
        record["episode_errors"] = sum(v for k, v in totals.items() if k.startswith("episode_errors/"))
        return record
