"""`tidal replay stats` and `tidal replay audit`: read-only views of a run's replay table.

Both connect as observers (by address and namespace): they read the table, never its settings'
owner's config, and cannot change it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ray
import redis
from rich.console import Console

from buffer import ReplayClient, ReplayStats, ShardUnavailable, render_stats_table
from buffer.preflight import connect_checked
from cluster.control import find_controller
from cluster.errors import ControlError
from cluster.run_shards import RunShards


def discover_namespace(url: str, password: str | None) -> str:
    """The one replay table on a shard (a run's namespace is its run directory's name)."""
    conn = connect_checked(url, password)
    try:
        names = sorted(key.decode().rsplit(":", 1)[0] for key in conn.scan_iter(match="*:config", count=1000))
    finally:
        conn.close()
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise ControlError(f"{url} holds {len(names)} replay tables ({found}): pass --namespace")
    return names[0]


def read_replay_stats(shard_urls: list[str], namespace: str, password: str | None = None) -> ReplayStats:
    """Every shard's statistics; fails when not one shard answers."""
    with ReplayClient.observer(shard_urls, namespace, password) as client:
        stats = client.stats()
    if not any(shard.up for shard in stats.shards):
        addresses = ", ".join(shard.address for shard in stats.shards)
        raise ControlError(f"none of the {len(stats.shards)} replay shard(s) answered ({addresses}) for table "
                           f"{namespace!r}; is the run (or its Redis) up?")
    return stats


def _stats(args: argparse.Namespace) -> int:
    if args.shards:
        try:
            namespace = args.namespace or discover_namespace(args.shards[0], None)
        except ShardUnavailable as e:
            raise ControlError(str(e)) from e
        shard_urls = list(args.shards)
    else:
        shard_urls, namespace = ray.get(find_controller(args.address).replay_target.remote(), timeout=10)
    Console(width=140).print(render_stats_table(read_replay_stats(shard_urls, namespace)))
    return 0


def _audit(args: argparse.Namespace) -> int:
    """The run's ledger, read from its live shards, or from its shards' data started for the audit."""
    run_dir = args.run_dir
    if not (run_dir / "config.yaml").is_file():
        raise ControlError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        with RunShards.open(run_dir) as shards, ReplayClient.observer(shards.urls, shards.namespace,
                                                                      shards.password) as client:
            audit = client.audit()
    except (ShardUnavailable, redis.RedisError) as e:
        raise ControlError(f"the replay of {run_dir} could not be read: {e}") from e
    Console(width=160).print(audit.render())
    return 1 if audit.total("unaccounted") or audit.over_trained else 0


def register(subparsers) -> None:
    """Add `replay stats` and `replay audit` to the `tidal` argparse subcommands."""
    replay = subparsers.add_parser("replay", help="inspect the replay service")
    commands = replay.add_subparsers(dest="replay_command", required=True)
    stats = commands.add_parser("stats", help="per-shard size, priority mass, counters, evictions, staleness")
    source = stats.add_mutually_exclusive_group()
    source.add_argument("--address", help="Ray cluster of the live run (default: the one started on this machine)")
    source.add_argument("--shards", nargs="+", metavar="URL", help="read these Redis shards directly (no Ray)")
    stats.add_argument("--namespace", help="with --shards: the table's namespace (a run uses its run directory's "
                                           "name); default: the only table on the first shard")
    stats.set_defaults(func=_stats)
    audit = commands.add_parser("audit", help="what became of every acknowledged group: trained, evicted (why), "
                                              "buffered, unaccounted")
    audit.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    audit.set_defaults(func=_audit)
