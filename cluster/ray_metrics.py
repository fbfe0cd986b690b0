"""The run's numbers in Ray's metrics system (ray.util.metrics): they reach Ray's Prometheus endpoint,
and so the dashboard's metrics views and Grafana (docker/grafana-tidal.json).

Every numeric key of a step's record becomes a gauge `tidal_<key>` (slashes and other separators
as underscores; Ray's endpoint prefixes `ray_`, so Prometheus sees `ray_tidal_<key>`): reward, staleness, learner step time and tokens/s, BAPO bounds, eval measures,
episode errors, replay totals, admission and worker counts. Families that Prometheus should see
as one series with a label are tagged instead: per rollout worker (tokens/s, groups/s, weight
sync seconds) and per replay shard (size, priority mass).
"""

from __future__ import annotations

import re

from ray.util.metrics import Gauge

_SEPARATORS = re.compile(r"[^a-zA-Z0-9_]+")
_SHARD_KEY = re.compile(r"^replay/shard(\d+)/(size|priority_mass)$")


def series_name(key: str) -> str:
    return "tidal_" + _SEPARATORS.sub("_", key).strip("_")


class RunGauges:
    def __init__(self, run_name: str) -> None:
        self.run_name = run_name
        self._gauges: dict[str, Gauge] = {}

    def _set(self, name: str, value: float, tags: dict[str, str] | None = None) -> None:
        tags = {"run": self.run_name, **(tags or {})}
        if name not in self._gauges:
            self._gauges[name] = Gauge(name, description=f"Tidal: {name[len('tidal_'):]}", tag_keys=tuple(tags))
        self._gauges[name].set(float(value), tags=tags)

    def publish(self, record: dict, replay: dict[str, float], per_worker: dict[str, dict[str, float]]) -> None:
        """`record`: the step's record; `replay`: ReplayStats.to_dict(); `per_worker`: worker name ->
        its rates (tokens_per_s, groups_per_s, weight_sync_s)."""
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._set(series_name(key), value)
        for key, value in replay.items():
            match = _SHARD_KEY.match(key)
            if match:
                self._set(f"tidal_replay_shard_{match.group(2)}", value, {"shard": match.group(1)})
        for worker, rates in per_worker.items():
            for name, value in rates.items():
                self._set(f"tidal_worker_{name}", value, {"worker": worker})
