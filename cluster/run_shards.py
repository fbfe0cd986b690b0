"""The Redis shards of one run: started for it (local servers under the run directory) or given by
URL, and found again after the run (for an audit, or a resume) from what the run directory records.

`run_dir/replay/shards.json` records the shard URLs and the table's namespace. A later reader uses
the recorded servers when they still answer, and otherwise starts servers of its own on the same
data directories, whose append-only files bring the table back. (Local servers end with the
process that started them, even on SIGKILL: buffer/shards.py.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from buffer import (LocalShard, ReplayConfig, ShardRefusedError, ShardUnavailable, check_shards, start_local_shards,
                    stop_local_shards)

RECORD = "shards.json"


@dataclass
class RunShards:
    urls: list[str]
    namespace: str
    password: str | None = field(default=None, repr=False)
    started: list[LocalShard] = field(default_factory=list)  # servers this object started (and stops)

    @classmethod
    def start(cls, config: ReplayConfig, run_dir: Path) -> "RunShards":
        """The run's shards: the configured URLs, or local servers on the run's data directories."""
        password = config.password.get_secret_value() if config.password else None
        started = [] if config.shard_urls else start_local_shards(config.num_shards, run_dir / "replay", config.fsync,
                                                                  password)
        shards = cls(list(config.shard_urls) or [s.url for s in started], run_dir.name, password, started)
        shards.record(run_dir)
        return shards

    def record(self, run_dir: Path) -> None:
        (run_dir / "replay").mkdir(parents=True, exist_ok=True)
        (run_dir / "replay" / RECORD).write_text(json.dumps({"urls": self.urls, "namespace": self.namespace}))

    @classmethod
    def open(cls, run_dir: Path) -> "RunShards":
        """The shards of the run in `run_dir`, for reading: the live ones, or, when none of them
        listens any more, servers started on its data. A shard that answers but refuses the password
        or is too busy to reply is still live: servers of our own on its data directory would append
        to its files (ShardAuthError, ShardTimeoutError)."""
        config = ReplayConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text())["replay"])
        password = config.password.get_secret_value() if config.password else None
        record = run_dir / "replay" / RECORD
        if not record.is_file():
            raise ShardUnavailable(f"{run_dir} records no replay shards (no {record}): the run ended before "
                                   "its replay started")
        recorded = json.loads(record.read_text())
        if config.shard_urls:
            return cls(recorded["urls"], recorded["namespace"], password)
        refused = _not_listening(recorded["urls"], password)
        if not refused:
            return cls(recorded["urls"], recorded["namespace"], password)
        if len(refused) < len(recorded["urls"]):
            raise ShardUnavailable(f"only some of the run's shards answer (not {', '.join(refused)}): a live run "
                                   "restarting one? try again in a few seconds")
        # the run is over: bring its data back on servers of our own
        started = start_local_shards(len(recorded["urls"]), run_dir / "replay", config.fsync, password)
        return cls([s.url for s in started], recorded["namespace"], password, started)

    def revive(self) -> list[str]:
        """Restart any local server of the run that died, on its port and data directory (its
        append-only file brings the table back); returns a note per restart."""
        notes = []
        for shard in self.started:
            if shard.process is not None and shard.process.poll() is not None:
                code = shard.process.returncode
                shard.start()
                notes.append(f"replay shard {shard.url} had exited ({code}); restarted it on its data")
        return notes

    def close(self) -> None:
        stop_local_shards(self.started)
        self.started = []

    def __enter__(self) -> "RunShards":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _not_listening(urls: list[str], password: str | None) -> list[str]:
    """The URLs nothing listens at; any other failure to reach a shard is raised."""
    refused = []
    for url in urls:
        try:
            check_shards([url], password, timeout_s=1.0)
        except ShardRefusedError:
            refused.append(url)
    return refused
