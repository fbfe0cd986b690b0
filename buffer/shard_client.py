"""One shard as the client sees it: a lazy connection, the Lua scripts, and down/up tracking."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

import redis
from redis.backoff import NoBackoff
from redis.connection import Encoder, PythonRespSerializer
from redis.retry import Retry

from buffer.errors import ConfigMismatchError, InsecureShardError, ShardUnavailable, TableNotFoundError
from buffer.scripts import SCRIPT_NAMES, script_source
from buffer.table import differences

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_NOT_INITIALISED = "is not initialised"
# redis-py's pure-Python packer sends arguments over 6 KB as their own buffers; the default
# (hiredis) packer copies every payload into one command buffer first.
_PAYLOAD_PACKER = PythonRespSerializer(6_000, Encoder("utf-8", "strict", False).encode)
_STAGE_TTL_MS = 60_000  # a staged insert payload whose script never ran (client died mid-pipeline) expires
# Groups per insert script: the shard runs a chunk's script while the next chunk's payloads arrive,
# and a script's fixed costs (limiter, counters, the tree's shared path) are paid once per chunk.
_INSERT_CHUNK = 4


@dataclass(frozen=True)
class LimiterState:
    inserts: int
    samples: int
    size: int

    def __str__(self) -> str:
        return f"inserts={self.inserts} samples={self.samples} size={self.size}"


@dataclass(frozen=True)
class InsertReply:
    status: str  # ok | dup | skip | stale | blocked
    evicted: int = 0
    limiter: LimiterState | None = None


@dataclass(frozen=True)
class Draw:
    group_id: str
    leaf: float  # p^alpha of the group when drawn
    mass: float  # the shard's total leaf mass when drawn
    times_sampled: int
    priority: float


@dataclass
class SampleReply:
    status: str  # ok | empty | blocked
    draws: list[Draw] = field(default_factory=list)
    payloads: dict[str, bytes | None] = field(default_factory=dict)  # None: vanished since the draw
    limiter: LimiterState | None = None
    size: int = 0  # after the draws
    mass: float = 0.0


def _insert_reply(reply: list) -> InsertReply:
    status = reply[0].decode()
    if status == "ok":
        return InsertReply(status, evicted=int(reply[1]))
    if status == "blocked":
        return InsertReply(status, limiter=LimiterState(*map(int, reply[1:4])))
    return InsertReply(status)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def check_address(url: str, password: str | None) -> None:
    """The service refuses to talk to a Redis off this machine without a password."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return
    if parsed.hostname not in LOOPBACK_HOSTS and not (password or parsed.password):
        raise InsecureShardError(f"shard {parsed.hostname}:{parsed.port} is not on loopback and has no password; "
                                 "set ReplayConfig.password or TIDAL_REDIS_PASSWORD")


class ShardConnection:
    """`expected`: the table settings this client relies on (None: an observer that takes the
    table as it is). The settings are read on first contact, never written."""

    def __init__(self, index: int, url: str, namespace: str, password: str | None,
                 expected: dict[str, str] | None, retry_down_s: float) -> None:
        check_address(url, password)
        self.index, self.url, self.namespace = index, url, namespace
        self._password = password
        self._expected = expected
        self.table: dict[str, str] = {}  # the table's settings as stored on the shard
        self._retry_down_s = retry_down_s
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._scripts: dict[str, redis.commands.core.Script] = {}
        self._down_until = 0.0
        self.is_down = False
        self.down_events = 0

    @property
    def label(self) -> str:
        parsed = urlparse(self.url)
        return f"shard {self.index} ({parsed.hostname}:{parsed.port})"  # never the password

    def _connection(self) -> redis.Redis:
        with self._lock:
            if self._redis is None:
                # No client-side retries: a dead shard must fail fast so the others take over,
                # and a retried sample script would count its draws twice.
                conn = redis.Redis.from_url(self.url, password=self._password, retry=Retry(NoBackoff(), 0),
                                            socket_timeout=10.0, socket_connect_timeout=2.0,
                                            command_packer=_PAYLOAD_PACKER)
                self._scripts = {name: conn.register_script(script_source(name)) for name in SCRIPT_NAMES}
                self._read_table()
                self._redis = conn  # only once the table is read: a failed first contact retries the whole setup
            return self._redis

    def _read_table(self) -> None:
        reply = self._scripts["table"](args=[self.namespace])
        stored = {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}
        if not stored:
            raise TableNotFoundError(f"{self.label} has no replay table {self.namespace!r} (a run creates its "
                                     "table when it starts; a shard that lost its data has none)")
        mismatched = differences(stored, self._expected) if self._expected is not None else []
        if mismatched:
            raise ConfigMismatchError(f"the replay table {self.namespace!r} on {self.label} has other settings than "
                                      f"this client expects: {'; '.join(mismatched)}")
        self.table = stored

    def available(self) -> bool:
        return not self.is_down or time.monotonic() >= self._down_until

    def call(self, script: str, args: list) -> object:
        return self._guarded(lambda: self._script_reply(script, args, self._exchange([self._evalsha(script, args)])[0]))

    def _evalsha(self, script: str, args: list) -> tuple:
        # Plain EVALSHA, not Script objects: those ask SCRIPT EXISTS first (a round trip).
        self._connection()  # the first contact registers the scripts
        return ("EVALSHA", self._scripts[script].sha, 0, self.namespace, *args)

    def _script_reply(self, script: str, args: list, reply: object) -> object:
        """A script's reply; after an error a restarted shard explains (its scripts or its table lost),
        the reply of a rerun (such a script did nothing, and staged payloads outlive it)."""
        if isinstance(reply, redis.ResponseError):
            self._recover(reply)
            reply = self._exchange([self._evalsha(script, args)])[0]
            if isinstance(reply, redis.ResponseError):
                raise reply
        return reply

    def _guarded(self, action: Callable[[], object]) -> object:
        """`action()`, with this shard marked down when it cannot be reached or has lost its table."""
        if not self.available():
            raise ShardUnavailable(f"{self.label} is down")
        try:
            result = action()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self._mark_down(e)
            raise ShardUnavailable(f"{self.label} is down: {e}") from e
        except TableNotFoundError as e:  # a shard restarted without its data: unusable until the run re-creates it
            self._mark_down(e)
            raise
        self._mark_up()
        return result

    def _exchange(self, commands: Iterable[tuple]) -> list[object]:
        """Send every command on one connection, then read every reply: a pipeline (one round trip)
        whose later commands may still be being made while the shard serves the first ones. Error
        replies are returned in place, not raised."""
        pool = self._connection().connection_pool
        connection = pool.get_connection()
        try:
            sent = 0
            for command in commands:
                connection.send_packed_command(connection.pack_command(*command))
                sent += 1
            replies = []
            for _ in range(sent):
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as e:
                    replies.append(e)
            return replies
        except BaseException:
            connection.disconnect()  # replies may be left unread on it
            raise
        finally:
            pool.release(connection)

    def _recover(self, error: redis.ResponseError) -> None:
        """A restarted shard lost its scripts (NOSCRIPT): load them again. One that lost its table
        (restarted without its data) cannot serve until the run creates the table again."""
        if isinstance(error, redis.exceptions.NoScriptError):
            # only those still missing: each chunk of an insert pipeline sent before the restart was
            # noticed comes back NOSCRIPT, and the first chunk's recovery has loaded them all
            conn, scripts = self._connection(), list(self._scripts.values())
            for registered, exists in zip(scripts, conn.script_exists(*(s.sha for s in scripts))):
                if not exists:
                    conn.script_load(registered.script)
        elif _NOT_INITIALISED in str(error):
            self._read_table()
        else:
            raise error

    def _mark_down(self, error: Exception) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self._retry_down_s
            if not self.is_down:
                self.is_down = True
                self.down_events += 1
                log.warning("%s is down (%s): inserts and samples go to the other shards", self.label, error)

    def _mark_up(self) -> None:
        if self.is_down:
            with self._lock:
                if self.is_down:
                    self.is_down = False
                    log.warning("%s is back: reconnected", self.label)

    def insert_many(self, inserts: Iterable[tuple[str, bytes, float, int, int]]) -> list[InsertReply]:
        """(group id, payload, priority, oldest and newest policy version) each, in one pipeline: each
        payload SET at a staging key, then one insert script per _INSERT_CHUNK groups. `inserts` is
        consumed as it is sent: given a generator that encodes the payloads, the shard stores the
        first groups while later ones are encoded (an error raised by it leaves the groups sent
        before it stored)."""
        kinds: list[str] = []
        scripts: list[list] = []

        def commands():
            for chunk in _chunks(inserts, _INSERT_CHUNK):
                args = []
                for group_id, payload, priority, oldest, newest in chunk:
                    stage = f"{self.namespace}:stage:{group_id}:{os.urandom(8).hex()}"
                    kinds.append("set")
                    yield ("SET", stage, payload, "PX", _STAGE_TTL_MS)
                    args += [group_id, stage, repr(float(priority)), oldest, newest]
                kinds.append("script")
                scripts.append(args)
                yield self._evalsha("insert", args)

        def exchange() -> list[InsertReply]:
            results = self._exchange(commands())
            for result in (r for r, kind in zip(results, kinds) if kind == "set"):
                if isinstance(result, redis.ResponseError):
                    raise result  # e.g. out of memory: its script stops at the missing payload
            script_results = [r for r, kind in zip(results, kinds) if kind == "script"]
            return [_insert_reply(one) for args, result in zip(scripts, script_results)
                    for one in self._script_reply("insert", args, result)]

        return self._guarded(exchange)

    def sample(self, count: int, learner_version: int, uniforms: list[float]) -> SampleReply:
        reply = self.call("sample", [count, learner_version, *map(repr, uniforms)])
        status = reply[0].decode()
        if status != "ok":
            return SampleReply(status, limiter=LimiterState(*map(int, reply[1:4])))
        flat_draws, flat_removed = reply[3], reply[4]
        draws = [Draw(flat_draws[i].decode(), float(flat_draws[i + 1]), float(flat_draws[i + 2]),
                      int(flat_draws[i + 3]), float(flat_draws[i + 4])) for i in range(0, len(flat_draws), 5)]
        # The script returns only the payloads of groups it removed; the rest come by one MGET,
        # outside Lua (copying megabytes through a Lua reply doubles the shard's work).
        payloads = {flat_removed[i].decode(): flat_removed[i + 1] for i in range(0, len(flat_removed), 2)}
        payloads.update(self._fetch_payloads({d.group_id for d in draws} - payloads.keys()))
        return SampleReply(status, draws, payloads, size=int(reply[1]), mass=float(reply[2]))

    def _fetch_payloads(self, group_ids: set[str]) -> dict[str, bytes | None]:
        """Group id -> payload, None where it vanished since the draw (evicted by a concurrent insert)."""
        if not group_ids:
            return {}
        ordered = sorted(group_ids)
        values = self._guarded(lambda: self._connection().mget([f"{self.namespace}:p:{gid}" for gid in ordered]))
        return dict(zip(ordered, values))

    def mass(self, learner_version: int) -> tuple[int, float]:
        """(size, total leaf mass) after evicting stale groups."""
        size, mass = self.call("mass", [learner_version])
        return int(size), float(mass)

    def size(self) -> int:
        return int(self.call("size", []))

    def trained(self, version: int, uses: list[tuple[str, float]]) -> int:
        flat: list = [version]
        for group_id, priority in uses:
            flat += [group_id, repr(float(priority))]
        return int(self.call("trained", flat))

    def set_version(self, version: int, rewind: bool) -> int:
        return int(self.call("version", [version, int(rewind)]))

    def ledger_entries(self) -> list[dict[str, str]]:
        """Every group's ledger entry (t: times trained, v: versions, out: why it left), for audits."""
        conn = self._connection()
        keys = list(conn.scan_iter(match=f"{self.namespace}:l:*", count=1000))
        with conn.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            entries = pipe.execute()
        return [{k.decode(): v.decode() for k, v in entry.items()} for entry in entries]

    def quarantine(self, group_id: str, payload: bytes, ttl_s: int) -> bool:
        """Whether this call removed the group (False: it was no longer stored)."""
        return bool(self.call("quarantine", [group_id, payload, ttl_s]))

    def stats(self, learner_version: int) -> tuple[dict[str, int], int, float, int, list[int], dict[str, int]]:
        counters, size, mass, version, histogram, ledger = self.call("stats", [learner_version])
        return _named(counters), int(size), float(mass), int(version), [int(h) for h in histogram], _named(ledger)

    def redis(self) -> redis.Redis:
        """The raw connection (success store, benchmarks)."""
        return self._connection()

    def close(self) -> None:
        with self._lock:
            if self._redis is not None:
                self._redis.close()
                self._redis = None


def _named(flat: list) -> dict[str, int]:
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}
