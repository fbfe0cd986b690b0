"""Replay benchmark: insert/sample throughput and latency against the raw Redis ceiling.

Starts its own redis-server shards (AOF on, fsync everysec), inserts and samples groups of
8 trajectories x 1024 tokens through ReplayClient (insert_many of `batch` groups per call, plus
one-group insert calls for their latency), and, on the same servers and bytes, times
redis-py pipelined SET and MGET (the ceiling). The *_ratio_interleaved figures alternate ours
and the ceiling round by round, so that load from other processes hits both alike, first on a
fresh table (its memory growing with every insert), then (*_at_capacity) on the same table
filled to capacity, where every insert evicts a group: a long run's steady state. The raw side
handles the same bytes the same way: its SETs write new keys (as inserts do, not overwriting
warm ones) and its MGETs read `batch` payloads drawn at random from those the table holds (as
the sampler's draws do, not the same few keys every time, which stay in the CPU's cache).
`breakdown` times the parts of one insert_many and
one sample call (encode, server, decode) beside the raw SET / MGET, and the ratio the server side
alone allows. Writes bench/results/replay.json and prints it.

    python -m bench.replay            # full run (about 30 s on 2 cores)
    python -m bench.replay --quick    # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path

import numpy as np
import redis

from buffer import (Group, ReplayClient, ReplayConfig, Trajectory, create_table, decode_group, encode_group,
                    start_local_shards, stop_local_shards)
from buffer.shard_client import ShardConnection

RESULTS = Path(__file__).parent / "results" / "replay.json"
TRAJECTORIES, PROMPT_TOKENS, COMPLETION_TOKENS = 8, 128, 1024


@dataclasses.dataclass(frozen=True)
class Sizes:
    inserts_per_client: int
    sample_calls_per_client: int
    batch: int  # groups per sample call, per insert_many call and per raw pipeline / MGET
    calls_per_block: int  # calls timed together in each interleaved round (single calls swing 3x here)


FULL = Sizes(inserts_per_client=300, sample_calls_per_client=60, batch=16, calls_per_block=10)
QUICK = Sizes(inserts_per_client=40, sample_calls_per_client=8, batch=8, calls_per_block=1)


def make_group(group_id: str, seed: int = 0) -> Group:
    rng = np.random.default_rng(seed)
    trajectories = [
        Trajectory(prompt_ids=rng.integers(0, 32_000, PROMPT_TOKENS),
                   completion_ids=rng.integers(0, 32_000, COMPLETION_TOKENS), loss_mask=np.ones(COMPLETION_TOKENS), behavior_logprobs=rng.normal(size=COMPLETION_TOKENS),
                   policy_versions=np.zeros(COMPLETION_TOKENS), reward=float(i % 2))
        for i in range(TRAJECTORIES)
    ]
    return Group(group_id, "task", "bench", time.time(), trajectories)


def _config(namespace: str) -> ReplayConfig:
    # capacity bounds the servers' memory; FIFO eviction is part of the measured insert path
    return ReplayConfig(namespace=namespace, capacity_per_shard=2_000, password=None)


def _worker(task: tuple) -> tuple[float, float, list[float]]:
    """One client process: (start, end, per-call latencies in seconds)."""
    phase, namespace, urls, worker, sizes = task
    client = ReplayClient(_config(namespace), urls, seed=worker)
    template = make_group("template", seed=worker)
    latencies = []
    start = time.time()
    if phase == "insert_single":  # one group per call: the latency a lone producer sees
        for i in range(sizes.inserts_per_client):
            group = dataclasses.replace(template, group_id=f"s{worker}:{i}")
            t0 = time.perf_counter()
            client.insert(group)
            latencies.append(time.perf_counter() - t0)
    elif phase == "insert":  # insert_many of `batch` groups per call, as the raw SET pipelines them
        for start_index in range(0, sizes.inserts_per_client, sizes.batch):
            stop_index = min(start_index + sizes.batch, sizes.inserts_per_client)
            groups = [dataclasses.replace(template, group_id=f"{worker}:{i}") for i in range(start_index, stop_index)]
            t0 = time.perf_counter()
            client.insert_many(groups)
            latencies.append(time.perf_counter() - t0)
    else:
        for _ in range(sizes.sample_calls_per_client):
            t0 = time.perf_counter()
            client.sample(sizes.batch, learner_version=0)
            latencies.append(time.perf_counter() - t0)
    end = time.time()
    client.close()
    return start, end, latencies


def _run_phase(pool, phase: str, namespace: str, urls: list[str], clients: int, sizes: Sizes) -> dict:
    results = pool.map(_worker, [(phase, namespace, urls, w, sizes) for w in range(clients)])
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    latencies = np.concatenate([r[2] for r in results])
    groups = {"insert_single": sizes.inserts_per_client, "insert": sizes.inserts_per_client,
              "sample": sizes.sample_calls_per_client * sizes.batch}[phase] * clients
    groups_per_s = groups / elapsed
    return {"groups_per_s": groups_per_s, "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3)}


def _interleaved_ratios(url: str, template: Group, sizes: Sizes, rounds: int = 8) -> tuple[float, float]:
    """Median (ours / raw) over alternating rounds of insert_many vs pipelined SET and sample vs MGET
    (which goes first alternates too): on a shared machine the load drifts between separate
    measurements, not within a round. The table is created on the first call and kept."""
    config = _config("bench-interleaved")
    create_table(config, [url])
    client = ReplayClient(config, [url], seed=0)
    conn = redis.Redis.from_url(url)
    payload, calls, rng = encode_group(template), sizes.calls_per_block, np.random.default_rng(0)
    insert_ratios, sample_ratios = [], []
    call = uuid.uuid4().hex[:8]  # ids new to the table on every call: a repeated id is refused as a duplicate, cheaply
    for r in range(rounds):
        batches = [[dataclasses.replace(template, group_id=f"ab{call}:{r}:{c}:{j}") for j in range(sizes.batch)]
                   for c in range(calls)]
        set_keys = _new_keys(calls, sizes.batch)
        raw, ours = _in_turn(r, lambda: _seconds(lambda: [_pipelined_set(conn, keys, payload) for keys in set_keys]),
                             lambda: _seconds(lambda: [client.insert_many(batch) for batch in batches]))
        insert_ratios.append(raw / ours)
        _delete(conn, set_keys)
        get_keys = _drawn_payload_keys(conn, config.namespace, calls, sizes.batch, rng)
        raw, ours = _in_turn(r, lambda: _seconds(lambda: [conn.mget(keys) for keys in get_keys]),
                             lambda: _seconds(lambda: [client.sample(sizes.batch, learner_version=0) for _ in range(calls)]))
        sample_ratios.append(raw / ours)
    conn.close()
    client.close()
    return float(np.median(insert_ratios)), float(np.median(sample_ratios))


def _new_keys(calls: int, batch: int) -> list[list[str]]:
    """`batch` keys no SET has written, for each call: the raw side writes new memory, as inserts do
    (overwriting the same keys reuses memory the CPU's cache still holds)."""
    return [[f"raw:{uuid.uuid4().hex}" for _ in range(batch)] for _ in range(calls)]


def _drawn_payload_keys(conn: redis.Redis, namespace: str, calls: int, batch: int,
                        rng: np.random.Generator) -> list[list[str]]:
    """`batch` payload keys of groups the table holds, drawn uniformly with replacement, for each
    call: the raw side reads what the sampler reads (the bench's groups all have one priority), not
    the same few keys every time. Reads the table's key layout (buffer/lua/common.lua)."""
    stored = [f"{namespace}:p:{gid.decode()}" for gid in conn.zrange(f"{namespace}:fifo", 0, -1)]
    drawn = [[stored[i] for i in rng.integers(len(stored), size=batch)] for _ in range(calls)] if stored else []
    distinct = {key for keys in drawn for key in keys}
    if not distinct or conn.exists(*distinct) != len(distinct):  # a missing key would make the raw side look fast
        raise RuntimeError(f"table {namespace!r} has no payloads at the keys its index names: has its layout changed?")
    return drawn


def _delete(conn: redis.Redis, key_lists: list[list[str]]) -> None:
    conn.delete(*(key for keys in key_lists for key in keys))


def _fill_to_capacity(url: str, template: Group, batch: int) -> None:
    """Insert into the interleaved bench's table until it holds capacity_per_shard groups."""
    config = _config("bench-interleaved")
    client = ReplayClient(config, [url], seed=1)
    for start in range(0, config.capacity_per_shard, batch):
        client.insert_many([dataclasses.replace(template, group_id=f"fill:{start}:{j}") for j in range(batch)])
    client.close()


def _breakdown(url: str, template: Group, sizes: Sizes, rounds: int = 8) -> dict:
    """Where one insert_many and one sample call of `batch` groups spend their time: each part timed
    over a block of calls in the same round as the raw SET / MGET it is compared with (blocks, as in
    `_interleaved_ratios`: single calls swing 3x here), medians over rounds, ms per call.

    The shard's parts (the insert pipeline with payloads already encoded; the sample script plus
    the MGET of what it drew) bound the ratio any client could reach on these scripts: the
    *_bound_ratio figures are raw / the shard's part, as if encoding, decoding and the client's own
    bookkeeping cost nothing."""
    config = _config("bench-breakdown")
    create_table(config, [url])
    client = ReplayClient(config, [url], seed=0)
    shard = ShardConnection(0, url, config.namespace, None, None, config.retry_down_shard_s)
    conn = redis.Redis.from_url(url)
    payload, calls, rng = encode_group(template), sizes.calls_per_block, np.random.default_rng(0)
    parts: dict[str, list[float]] = {}

    def timed(name: str, action) -> list:
        """`action(call)` for each call of the block; their results."""
        started = time.perf_counter()
        results = [action(c) for c in range(calls)]
        parts.setdefault(name, []).append((time.perf_counter() - started) * 1e3 / calls)
        return results

    def sample_parts():
        # the shard's part: the sample script and the MGET of the payloads it drew
        replies = timed("sample_server", lambda c: shard.sample(sizes.batch, 0, rng.random(sizes.batch).tolist()))
        timed("sample_decode", lambda c: [decode_group(payload) for payload in replies[c].payloads.values()])
        timed("sample", lambda c: client.sample(sizes.batch, learner_version=0))

    for r in range(rounds):
        batches = [[dataclasses.replace(template, group_id=f"bd{r}:{c}:{j}") for j in range(sizes.batch)]
                   for c in range(calls)]
        set_keys = _new_keys(calls, sizes.batch)
        _in_turn(r, lambda: timed("raw_set", lambda c: _pipelined_set(conn, set_keys[c], payload)),
                 lambda: timed("insert_server", lambda c: shard.insert_many(
                     [(f"bs{r}:{c}:{j}", payload, 1.0, 0, 0) for j in range(sizes.batch)])),
                 lambda: timed("insert_many", lambda c: client.insert_many(batches[c])))
        timed("insert_encode", lambda c: [encode_group(g) for g in batches[c]])
        _delete(conn, set_keys)
        get_keys = _drawn_payload_keys(conn, config.namespace, calls, sizes.batch, rng)
        conn.mget(get_keys[0])  # untimed: the first read after the writes is slower, whichever side makes it
        _in_turn(r, lambda: timed("raw_mget", lambda c: conn.mget(get_keys[c])), sample_parts)
    conn.close()
    shard.close()
    client.close()
    ms = {name: round(float(np.median(values)), 3) for name, values in parts.items()}
    return {"ms_per_call": ms, "calls_per_block": calls,
            "insert_bound_ratio": round(ms["raw_set"] / ms["insert_server"], 3),
            "sample_bound_ratio": round(ms["raw_mget"] / ms["sample_server"], 3)}


def _in_turn(round_index: int, *actions) -> list:
    """Run `actions` forwards in even rounds and backwards in odd ones (results in the given order):
    the first read after a burst of writes is slower (about 1.3 ms vs 0.8 ms for an MGET of 16 here),
    so a fixed order would charge that to whichever side comes first."""
    order = range(len(actions)) if round_index % 2 == 0 else reversed(range(len(actions)))
    results = [None] * len(actions)
    for i in order:
        results[i] = actions[i]()
    return results


def _seconds(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _pipelined_set(conn: redis.Redis, keys: list[str], payload: bytes) -> None:
    with conn.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.set(key, payload)
        pipe.execute()


def _decode_us(payload: bytes) -> float:
    """Client-side cost of decode_group per group (best of 5), part of every sample() call."""
    return min(timeit.repeat(lambda: decode_group(payload), number=50, repeat=5)) / 50 * 1e6


def run(sizes: Sizes, shard_counts: list[int], client_counts: list[int]) -> dict:
    payload = encode_group(make_group("template"))
    megabytes = len(payload) / 1e6
    table = []
    with tempfile.TemporaryDirectory(prefix="tidal-bench-") as data_dir, \
            multiprocessing.get_context("spawn").Pool(max(client_counts)) as pool:
        shards = start_local_shards(max(shard_counts), data_dir)
        try:
            urls = [s.url for s in shards]
            interleaved_insert, interleaved_sample = _interleaved_ratios(urls[0], make_group("template"), sizes)
            _fill_to_capacity(urls[0], make_group("template"), sizes.batch)
            at_capacity_insert, at_capacity_sample = _interleaved_ratios(urls[0], make_group("template"), sizes)
            breakdown = _breakdown(urls[0], make_group("template"), sizes)
            with redis.Redis.from_url(urls[0]) as conn:
                conn.flushall()
            for num_shards in shard_counts:
                for clients in client_counts:
                    namespace = f"bench-{num_shards}-{clients}"
                    create_table(_config(namespace), urls[:num_shards])
                    row = {"shards": num_shards, "clients": clients}
                    for phase in ("insert_single", "insert", "sample"):
                        measured = _run_phase(pool, phase, namespace, urls[:num_shards], clients, sizes)
                        row.update({f"{phase}_{k}": round(v, 3) for k, v in measured.items()})
                        row[f"{phase}_mb_per_s"] = round(measured["groups_per_s"] * megabytes, 1)
                    table.append(row)
                    for url in urls[:num_shards]:
                        with redis.Redis.from_url(url) as conn:
                            conn.flushall()  # the benchmark's own servers: keep their memory bounded
        finally:
            stop_local_shards(shards)
    single = next(r for r in table if r["shards"] == 1 and r["clients"] == 1)
    return {
        "group_bytes": len(payload), "group_shape": f"{TRAJECTORIES} x ({PROMPT_TOKENS} + {COMPLETION_TOKENS}) tokens",
        "sample_batch": sizes.batch, "cpus": os.cpu_count(), "python": platform.python_version(),
        "insert_groups_per_s": single["insert_groups_per_s"], "sample_groups_per_s": single["sample_groups_per_s"],
        "insert_single_groups_per_s": single["insert_single_groups_per_s"],
        "insert_ratio_interleaved": round(interleaved_insert, 3), "sample_ratio_interleaved": round(interleaved_sample, 3),
        "insert_ratio_interleaved_at_capacity": round(at_capacity_insert, 3),
        "sample_ratio_interleaved_at_capacity": round(at_capacity_sample, 3),
        "decode_us_per_group": round(_decode_us(payload), 1),
        "breakdown": breakdown,
        "scaling": table,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal bench replay", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few operations, fewer configurations")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.quick:
        results = run(QUICK, shard_counts=[1, 2], client_counts=[1, 2])
    else:
        results = run(FULL, shard_counts=[1, 2, 4], client_counts=[1, 2, 3, 4])
    results["quick"] = args.quick
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
