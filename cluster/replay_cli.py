"""`tidal replay stats`: per-shard replay statistics of the live run, or of shards given by URL."""

from __future__ import annotations

import argparse
from pathlib import Path

import ray
from rich.console import Console

from buffer import ReplayClient, ReplayConfig, ReplayStats, render_stats_table
from cluster.config import load_config
from cluster.control import ControlError, find_controller


def _target(args: argparse.Namespace) -> tuple[ReplayConfig, list[str]]:
    """The replay config and shard URLs to read: given on the command line, or the live run's.

    A replay client writes its policy settings (limits, rate limiter) into the namespace when it
    connects, so an observer must use the run's own settings: the controller's, or --config's.
    """
    if not args.shards:
        return ray.get(find_controller(args.address).replay_target.remote())
    replay = load_config(args.config).replay if args.config else ReplayConfig()
    return replay.model_copy(update={"namespace": args.namespace or replay.namespace}), list(args.shards)


def read_replay_stats(config: ReplayConfig, shard_urls: list[str]) -> ReplayStats:
    """Every shard's statistics; fails when not one shard answers."""
    with ReplayClient(config, shard_urls) as client:
        stats = client.stats()
    if not any(shard.up for shard in stats.shards):
        addresses = ", ".join(shard.address for shard in stats.shards)
        raise ControlError(f"none of the {len(stats.shards)} replay shard(s) answered ({addresses}); "
                           "is the run (or its Redis) up?")
    return stats


def _stats(args: argparse.Namespace) -> int:
    Console(width=140).print(render_stats_table(read_replay_stats(*_target(args))))
    return 0


def register(subparsers) -> None:
    """Add `replay stats` to the `tidal` argparse subcommands."""
    replay = subparsers.add_parser("replay", help="inspect the replay service")
    commands = replay.add_subparsers(dest="replay_command", required=True)
    stats = commands.add_parser("stats", help="per-shard size, priority mass, counters, evictions, staleness")
    source = stats.add_mutually_exclusive_group()
    source.add_argument("--address", help="Ray cluster of the live run (default: the one started on this machine)")
    source.add_argument("--shards", nargs="+", metavar="URL", help="read these Redis shards directly (no Ray)")
    stats.add_argument("--namespace", help="with --shards: the run's key namespace (a run uses its run "
                                           "directory's name); default: the config's")
    stats.add_argument("--config", type=Path, help="with --shards: the run's YAML, so that this client's replay "
                                                   "settings match the run's")
    stats.set_defaults(func=_stats)
