"""ReplayClient: insert, sample and re-prioritise groups across S Redis shards.

Inserts go to the shard that the group id hashes to (the next live one if it is down).
A sample of n groups is split across shards in proportion to their total priority mass
(multinomially), and each shard draws its share exactly from its sum tree in one Lua call,
so the whole service samples P(i) = p_i^alpha / sum_j p_j^alpha.
Thread-safe within a process; pickles by address only (connections reopen lazily).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections import OrderedDict

import numpy as np
import redis

from buffer.codec import decode_group, encode_group
from buffer.config import ReplayConfig
from buffer.errors import CodecError, RateLimiterTimeout, ShardUnavailable
from buffer.priority import annealed_beta, importance_weights, learning_signal
from buffer.schema import Group, SampledGroup
from buffer.shard_client import Draw, LimiterState, SampleReply, ShardConnection
from buffer.ledger import LedgerAudit, ShardLedger
from buffer.stats import ClientCounters, ReplayStats, ShardStats
from buffer.table import table_fields
from buffer.success_store import SuccessStore

log = logging.getLogger(__name__)
_QUARANTINE_TTL_S = 7 * 86_400
_ROUTE_CACHE_SIZE = 100_000  # group id -> shard of recently sampled groups, for priority updates
# A learner waiting for groups looks again within 10 ms of their arrival: with a 50 ms cap, the
# async demo's learner spent 17% of its steps in these sleeps (py-spy). A look is a few round trips.
_MAX_BACKOFF_S = 0.01


def stable_hash(key: str) -> int:
    """Same value in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class _Backoff:
    """Sleeps of 1 ms doubling to 10 ms while a call waits on a rate limiter, up to a deadline."""

    def __init__(self, timeout: float | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.delay = 0.001

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def wait(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, _MAX_BACKOFF_S)


@dataclasses.dataclass
class _SamplePlan:
    """The state of one sample call: who owes how many draws, and what came back."""

    shares: dict[int, float]  # shard -> fraction of the total mass when the call began
    sizes: dict[int, int]  # shard -> number of groups
    pending: dict[int, int]  # shard -> draws still owed
    # (shard, draw, group, the shard's share of the mass when it was drawn): a later re-plan must
    # not re-price earlier draws (a shard emptied by max_times_sampled would give them P = 0).
    drawn: list[tuple[int, Draw, Group, float]] = dataclasses.field(default_factory=list)
    blocked: dict[int, str] = dataclasses.field(default_factory=dict)  # shard -> why it gave nothing
    excluded: set[int] = dataclasses.field(default_factory=set)  # shards found empty or down


class _LazyPayloads:
    """The encoded payload of groups[i], made on first use and kept for retries on other shards."""

    def __init__(self, groups: list[Group]) -> None:
        self._groups = groups
        self._payloads: dict[int, bytes] = {}

    def __getitem__(self, i: int) -> bytes:
        if i not in self._payloads:
            self._payloads[i] = encode_group(self._groups[i])
        return self._payloads[i]


class ReplayClient:
    """A client of the run's table: it connects by address and namespace and never writes the table's
    settings (the run does, with `create_table`). With `expect_table` it checks, on first contact
    with each shard, that the table has the settings of `config` (ConfigMismatchError otherwise);
    an observer (`ReplayClient.observer`) takes the table as it is."""

    def __init__(self, config: ReplayConfig, shard_urls: list[str], *, seed: int | None = None,
                 expect_table: bool = True) -> None:
        if not shard_urls:
            raise ValueError("shard_urls is empty: start shards first (buffer.start_local_shards)")
        self.config = config
        self.shard_urls = list(shard_urls)
        self._seed = seed
        self._expect_table = expect_table
        password = config.password.get_secret_value() if config.password else None
        expected = table_fields(config) if expect_table else None
        self._shards = [ShardConnection(i, url, config.namespace, password, expected, config.retry_down_shard_s)
                        for i, url in enumerate(self.shard_urls)]
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # guards the RNG, the counters and the route cache
        self._counters = ClientCounters()
        self._route_cache: OrderedDict[str, int] = OrderedDict()
        self._undelivered: dict[tuple[int, int], list[tuple[str, float]]] = {}  # (shard, version) -> training uses
        self._success_store = (SuccessStore(config.success_store, config.namespace)
                               if config.success_store.enabled else None)

    @classmethod
    def observer(cls, shard_urls: list[str], namespace: str, password: str | None = None) -> "ReplayClient":
        """A read-only view of the table `namespace` (stats, audits): no settings are needed or checked."""
        return cls(ReplayConfig(namespace=namespace, password=password), shard_urls, expect_table=False)

    def __getstate__(self) -> dict:
        return {"config": self.config, "shard_urls": self.shard_urls, "seed": self._seed,
                "expect_table": self._expect_table}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"], state["shard_urls"], seed=state["seed"], expect_table=state["expect_table"])

    # ---- routing -------------------------------------------------------------------------------

    def _home(self, key: str) -> int:
        return stable_hash(key) % len(self._shards)

    def _route(self, key: str) -> list[ShardConnection]:
        """The key's home shard first, then the others in ring order; only those not known down."""
        start = self._home(key)
        ring = [self._shards[(start + k) % len(self._shards)] for k in range(len(self._shards))]
        return [shard for shard in ring if shard.available()]

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self._counters, name, getattr(self._counters, name) + amount)

    def _uniforms(self, count: int) -> list[float]:
        with self._lock:
            return self._rng.random(count).tolist()

    # ---- insert --------------------------------------------------------------------------------

    def insert(self, group: Group, timeout: float | None = None) -> bool:
        """Store a group; False if it was not stored (a duplicate id, a zero-signal group under the
        prioritized selector, or already stale). Blocks while the shard's rate limiter says so."""
        return self.insert_many([group], timeout)[0]

    def insert_many(self, groups: list[Group], timeout: float | None = None) -> list[bool]:
        """Store groups, one pipeline of insert scripts per shard and round (each script atomic);
        result i says whether groups[i] was stored, as insert() would. Groups a shard's rate limiter
        blocks are retried with backoff; `timeout` runs from the first attempt on each shard.
        Raises ShardUnavailable if some group found every shard down (the others may be stored)."""
        timeout = self.config.insert_timeout_s if timeout is None else timeout
        prepared = [self._prepare(group) for group in groups]
        payloads = _LazyPayloads([group for group, _ in prepared])
        routes = [self._route(group.group_id) for group, _ in prepared]
        position = [0] * len(groups)  # index into routes[i] of the shard being tried
        stored: list[bool | None] = [None] * len(groups)
        backoffs: dict[int, _Backoff] = {}  # shard -> its deadline for this call
        pacing = _Backoff(None)
        while True:
            by_shard: dict[int, list[int]] = {}
            for i in (i for i, result in enumerate(stored) if result is None):
                if position[i] >= len(routes[i]):
                    raise ShardUnavailable(f"no shard could take group {groups[i].group_id}: "
                                           f"all {len(self._shards)} are down")
                by_shard.setdefault(routes[i][position[i]].index, []).append(i)
            if not by_shard:
                return [bool(result) for result in stored]
            blocked = {}
            for index, members in by_shard.items():
                backoffs.setdefault(index, _Backoff(timeout))
                limiter = self._insert_round(self._shards[index], members, prepared, payloads, position, stored)
                if limiter is not None:
                    blocked[index] = limiter
            for index, limiter in blocked.items():
                if backoffs[index].expired():
                    waiting = [groups[i].group_id for i in by_shard[index] if stored[i] is None]
                    raise RateLimiterTimeout(f"insert of {', '.join(waiting)} into {self._shards[index].label} was "
                                             f"blocked by the rate limiter for {timeout}s "
                                             f"({self._limiter_text(limiter)})")
            if blocked:
                pacing.wait()

    def _insert_round(self, shard: ShardConnection, members: list[int], prepared: list[tuple[Group, int | None]],
                      payloads: _LazyPayloads, position: list[int], stored: list[bool | None]) -> LimiterState | None:
        """One pipeline of `members` into `shard`; fills `stored`, moves groups on if the shard is down.
        Returns the limiter state if the shard blocked some of them."""
        try:
            # a generator: each payload is encoded while the shard stores the ones sent before it
            replies = shard.insert_many((prepared[i][0].group_id, payloads[i], prepared[i][0].priority,
                                         *prepared[i][0].policy_version_range()) for i in members)
        except ShardUnavailable:
            for i in members:
                position[i] += 1
            return None
        limiter = None
        for i, reply in zip(members, replies):
            if reply.status == "blocked":
                limiter = reply.limiter
                continue
            stored[i] = reply.status == "ok"
            if shard.index != self._home(prepared[i][0].group_id):  # its home was down (now or known before)
                self._count("rerouted_inserts")
            if stored[i]:
                self._remember_successes(*prepared[i])
        return limiter

    def _prepare(self, group: Group) -> tuple[Group, int | None]:
        """Success injection (ARPO), then the initial priority."""
        injected = None
        if self._success_store is not None:
            for shard in self._route(group.task_id)[:1]:  # a task's successes live on its home shard
                try:
                    group, injected = self._success_store.inject(group, shard.redis())
                except (ShardUnavailable, redis.ConnectionError, redis.TimeoutError) as e:
                    log.warning("success store on %s unavailable, group %s not patched: %s", shard.label,
                                group.group_id, e)
            if injected is not None:
                self._count("success_injections")
        if self.config.initial_priority == "learning_signal" or injected is not None:
            group = dataclasses.replace(group, priority=learning_signal(group.rewards))
        return group, injected

    def _remember_successes(self, group: Group, injected: int | None) -> None:
        if self._success_store is None:
            return
        for shard in self._route(group.task_id)[:1]:
            try:
                self._success_store.remember(group, shard.redis(), skip_index=injected)
            except (ShardUnavailable, redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("success store on %s unavailable, successes of %s not kept: %s", shard.label,
                            group.group_id, e)

    def _limiter_text(self, state: LimiterState | None) -> str:
        return f"{self.config.rate_limiter!r}; state {state}"

    # ---- sample --------------------------------------------------------------------------------

    def sample(self, num_groups: int, *, learner_version: int, timeout: float | None = None) -> list[SampledGroup]:
        """Draw `num_groups` groups (with replacement) in proportion to p^alpha across all shards.

        Groups more than max_staleness versions behind `learner_version` are evicted first.
        Blocks while a shard's rate limiter or an empty replay says so; raises RateLimiterTimeout.
        """
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        timeout = self.config.sample_timeout_s if timeout is None else timeout
        backoff = _Backoff(timeout)
        plan = self._plan(num_groups, learner_version)
        while len(plan.drawn) < num_groups:
            progressed = self._sample_round(plan, learner_version)
            if len(plan.drawn) >= num_groups:
                break
            if backoff.expired():  # checked every round: rounds that draw nothing usable must not spin past it
                states = "; ".join(f"{self._shards[i].label}: {why}" for i, why in sorted(plan.blocked.items()))
                raise RateLimiterTimeout(f"sample of {num_groups} groups waited {timeout}s and got "
                                         f"{len(plan.drawn)} ({self.config.rate_limiter!r}; "
                                         f"{states or 'no shard has groups to sample'})")
            if progressed:
                continue
            backoff.wait()
            # After a wait every live shard is asked again, a rate-limited one included.
            plan.blocked.clear()
            plan.pending = self._split(num_groups - len(plan.drawn), plan.shares, plan.excluded)
            if not plan.pending:  # every shard was empty or down: look again
                fresh = self._plan(num_groups - len(plan.drawn), learner_version)
                plan = dataclasses.replace(fresh, drawn=plan.drawn)
        return self._to_sampled(plan, learner_version)

    def _plan(self, count: int, learner_version: int) -> "_SamplePlan":
        """Split `count` draws over the live shards in proportion to their mass (after stale eviction)."""
        if len(self._shards) == 1:  # nothing to split: save the round trip (sample.lua evicts stale groups)
            return _SamplePlan(shares={0: 1.0}, sizes={0: 0}, pending={0: count})
        masses, sizes = {}, {}
        for shard in self._shards:
            if not shard.available():
                continue
            try:
                sizes[shard.index], masses[shard.index] = shard.mass(learner_version)
            except ShardUnavailable:
                continue
        total = sum(masses.values())
        shares = {i: (m / total if total > 0 else 0.0) for i, m in masses.items()}
        return _SamplePlan(shares=shares, sizes=sizes, pending=self._split(count, shares, excluded=set()))

    def _split(self, count: int, shares: dict[int, float], excluded: set[int]) -> dict[int, int]:
        live = [i for i, share in shares.items() if share > 0 and i not in excluded]
        if len(live) < 2:
            return {i: count for i in live}
        weights = np.array([shares[i] for i in live])
        with self._lock:
            counts = self._rng.multinomial(count, weights / weights.sum())
        return {i: int(c) for i, c in zip(live, counts)}

    def _sample_round(self, plan: "_SamplePlan", learner_version: int) -> bool:
        """One pass over the shards that still owe draws; True if anything changed."""
        progressed = False
        for index in list(plan.pending):
            count = plan.pending[index]  # draws moved here earlier in this round included
            if count == 0:
                continue
            shard = self._shards[index]
            try:
                reply = shard.sample(count, learner_version, self._uniforms(count))
            except ShardUnavailable:
                reply = SampleReply("down")
            if reply.status == "ok":
                plan.sizes[index] = reply.size
                good = self._decode_draws(shard, reply)
                plan.drawn.extend((index, draw, group, plan.shares[index]) for draw, group in good)
                plan.pending[index] -= len(good)
                plan.blocked.pop(index, None)
                progressed = progressed or bool(good)  # draws whose payloads all vanished are no progress
            elif reply.status == "blocked":
                # Shards whose limiters allow them take its draws until the next wait: limiters are per
                # shard, and one could hold the learner while another holds a producer, though the
                # table as a whole has room for both.
                plan.blocked[index] = f"blocked by the rate limiter, {reply.limiter}"
                progressed = self._move_draws(plan, index, plan.excluded | plan.blocked.keys()) or progressed
            else:  # down, or nothing left after stale eviction: its draws go to the other shards
                plan.blocked[index] = reply.status
                plan.excluded.add(index)
                progressed = self._move_draws(plan, index, plan.excluded) or progressed
        return progressed

    def _move_draws(self, plan: "_SamplePlan", index: int, excluded: set[int]) -> bool:
        """Move the draws shard `index` owes to the shards not `excluded`, by their shares (the draws
        keep those shards' shares as their probabilities); False if none can take them."""
        moved = self._split(plan.pending[index], plan.shares, excluded | {index})
        if not moved:
            return False
        plan.pending[index] = 0
        for other, extra in moved.items():
            plan.pending[other] = plan.pending.get(other, 0) + extra
        return True

    def _decode_draws(self, shard: ShardConnection, reply: SampleReply) -> list[tuple[Draw, Group]]:
        groups: dict[str, Group] = {}
        for group_id, payload in reply.payloads.items():
            if payload is None:
                # Evicted since the draw (then nothing is removed), or its payload lost while the group
                # is still indexed (data loss, a maxmemory policy), which would be drawn forever.
                self._quarantine(shard, group_id, b"", "its payload is missing")
                continue
            try:
                groups[group_id] = decode_group(payload)
            except CodecError as e:
                self._quarantine(shard, group_id, payload, str(e))
        return [(draw, groups[draw.group_id]) for draw in reply.draws if draw.group_id in groups]

    @staticmethod
    def _quarantine(shard: ShardConnection, group_id: str, payload: bytes, why: str) -> None:
        try:
            if shard.quarantine(group_id, payload, _QUARANTINE_TTL_S):
                log.warning("quarantined group %s from %s: %s", group_id, shard.label, why)
        except ShardUnavailable:
            pass  # the group stays; its next draw quarantines it

    def _to_sampled(self, plan: "_SamplePlan", learner_version: int) -> list[SampledGroup]:
        # P(i) = P(shard) * P(i | shard): the shard's share of the mass times leaf / shard mass.
        drawn, sizes = plan.drawn, plan.sizes
        probabilities = np.array([share * draw.leaf / draw.mass for _, draw, _, share in drawn])
        beta = annealed_beta(self.config.beta, self.config.beta_final, self.config.beta_anneal_versions,
                             learner_version)
        weights = importance_weights(probabilities, max(sum(sizes.values()), 1), beta)
        sampled = []
        with self._lock:
            for (index, draw, group, _), probability, weight in zip(drawn, probabilities, weights):
                self._route_cache[draw.group_id] = index
                self._route_cache.move_to_end(draw.group_id)
                sampled.append(SampledGroup(dataclasses.replace(group, priority=draw.priority), float(probability),
                                            float(weight), draw.times_sampled, index))
            while len(self._route_cache) > _ROUTE_CACHE_SIZE:
                self._route_cache.popitem(last=False)
        return sampled

    # ---- priorities, stats ---------------------------------------------------------------------

    def report_trained(self, version: int, uses: list[tuple[str, float]]) -> int:
        """The learner trained with the weights of `version` on these (group id, new priority) pairs,
        one per use (a group drawn twice in a batch appears twice): each use is recorded in the
        ledger, and groups still stored get their new priority (unknown ids are ignored).
        Returns how many priorities were applied."""
        by_shard: dict[tuple[int, int], list[tuple[str, float]]] = {}
        with self._lock:
            for group_id, priority in uses:
                if not (np.isfinite(priority) and priority >= 0):
                    raise ValueError(f"priority of {group_id} must be finite and >= 0, got {priority}")
                index = self._route_cache.get(group_id, self._home(group_id))
                by_shard.setdefault((index, version), []).append((group_id, priority))
            for (index, earlier), batch in self._undelivered.items():  # uses a down shard missed before
                by_shard.setdefault((index, earlier), [])[:0] = batch
            self._undelivered = {}
        applied = 0
        for (index, trained_with), batch in by_shard.items():
            try:
                applied += self._shards[index].trained(trained_with, batch)
            except ShardUnavailable:  # kept for the next report: the ledger must not miss a use
                with self._lock:
                    self._undelivered.setdefault((index, trained_with), []).extend(batch)
                self._count("delayed_training_reports", len(batch))
        return applied

    def set_learner_version(self, version: int, rewind: bool = False) -> int:
        """Tell every shard the learner's version (before its weights are published: a group made with
        newer weights than the learner's belongs to a lost timeline and is refused). `rewind` (after a
        restore from a checkpoint) lowers it and evicts the groups the lost timeline made; returns
        how many. A shard that is down is skipped: it learns the version from the next sample call."""
        evicted = 0
        for shard in self._shards:
            try:
                evicted += shard.set_version(version, rewind)
            except ShardUnavailable as e:
                log.warning("learner version %d not set on %s: %s", version, shard.label, e)
        return evicted

    def audit(self) -> "LedgerAudit":
        """The consumption ledger of every shard: what was acknowledged, trained, evicted (why), is
        still buffered, and what is unaccounted for. Raises ShardUnavailable if a shard is down."""
        shards = []
        for shard in self._shards:
            counters, size, *_, ledger = shard.stats(-1)
            shards.append(ShardLedger.from_counters(shard.index, ledger, size, shard.ledger_entries()))
        return LedgerAudit(shards, int(self._shards[0].table.get("max_times_sampled", "0")))

    def size(self) -> int:
        """Groups held by the shards that answer (one cheap call per shard)."""
        total = 0
        for shard in self._shards:
            if shard.available():
                try:
                    total += shard.size()
                except ShardUnavailable:
                    continue
        return total

    def stats(self, learner_version: int | None = None) -> ReplayStats:
        """Per-shard statistics; the staleness histogram is relative to `learner_version` (default: the
        latest version a sample call reported to that shard)."""
        shards = []
        for shard in self._shards:
            address = shard.label.split("(", 1)[1].rstrip(")")
            try:
                counters, size, mass, version, histogram, ledger = shard.stats(-1 if learner_version is None
                                                                              else learner_version)
                shards.append(ShardStats.from_counters(shard.index, address, counters, size, mass, version,
                                                       histogram, ledger))
            except ShardUnavailable:
                shards.append(ShardStats(shard.index, address, up=False))
        with self._lock:
            counters = dataclasses.replace(self._counters,
                                           shard_down_events=sum(s.down_events for s in self._shards))
        return ReplayStats(shards, counters)

    def close(self) -> None:
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> "ReplayClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
