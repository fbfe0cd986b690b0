"""Local redis-server processes for a run, the tests and the benchmark.

Each shard binds 127.0.0.1 on a free port, keeps its AOF in its own directory and reads its
settings (the password included) from a 0600 config file, so that no secret is on a command line.
A server ends with the process that started it, even when that process is killed with SIGKILL
(Linux's parent-death signal): a crashed run leaves no redis-server behind, and its data is safe
in the append-only file for the resumed run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from buffer.errors import ReplayError
from buffer.ports import free_port

log = logging.getLogger(__name__)
_START_TIMEOUT_S = 20.0


class ShardStartError(ReplayError, RuntimeError):
    """A local redis-server did not come up."""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (redis-server flushes its AOF on SIGTERM)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@dataclass
class LocalShard:
    port: int
    data_dir: Path
    fsync: str = "everysec"
    password: str | None = field(default=None, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"  # no password: URLs end up in logs

    def _write_config(self) -> Path:
        lines = [
            "bind 127.0.0.1", f"port {self.port}", f"dir {self.data_dir}", "daemonize no",
            "appendonly yes", f"appendfsync {self.fsync}", 'save ""', "logfile redis.log",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        path = self.data_dir / "redis.conf"
        path.touch(mode=0o600)
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> "LocalShard":
        """Start (or restart, on the same port and directory: the AOF is replayed) the server."""
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise ShardStartError("redis-server not found on PATH")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_path = self._write_config()
        # Its own session: Ctrl-C in the terminal reaches the run, which then stops the shards in order.
        self.process = subprocess.Popen([redis_server, str(config_path)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        conn = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1.0)
        deadline = time.monotonic() + _START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ShardStartError(f"redis-server on port {self.port} exited with {self.process.returncode}; "
                                          f"see {self.data_dir / 'redis.log'}")
                try:
                    if conn.ping():  # answers only once the AOF is loaded
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    time.sleep(0.02)
        finally:
            conn.close()
        self.stop()
        raise ShardStartError(f"redis-server on port {self.port} not ready after {_START_TIMEOUT_S}s")

    def kill(self) -> None:
        """SIGKILL: a crash, for tests of durability."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_local_shards(n: int, data_dir: str | os.PathLike, fsync: str = "everysec",
                       password: str | None = None) -> list[LocalShard]:
    """Start `n` redis-server processes on free loopback ports, shard i in data_dir/shard-i."""
    shards: list[LocalShard] = []
    try:
        for index in range(n):
            shard = LocalShard(free_port(), Path(data_dir) / f"shard-{index}", fsync, password)
            shards.append(shard.start())
    except ShardStartError:
        stop_local_shards(shards)
        raise
    log.info("started %d local redis shards: %s", n, [s.url for s in shards])
    return shards


def stop_local_shards(shards: list[LocalShard]) -> None:
    for shard in shards:
        shard.stop()
