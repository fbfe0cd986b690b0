"""`tidal status` and `tidal scale`: inspect and resize a live run through its controller."""

from __future__ import annotations

import argparse
import time

import ray
from rich.console import Console
from rich.table import Table

from buffer.stats import PER_SHARD_KEY
from cluster.control import RunStatus, find_controller
from cluster.placement import PlacementError

GCS_ADDRESS_HELP = ("the Ray cluster's GCS address HOST:PORT, e.g. head:6379 (not the dashboard URL that submit "
                    "takes; default: the cluster started on this machine)")


def render_status(status: RunStatus, now: float | None = None) -> Table:
    """Two columns, key and value: the run, its progress, the latest metrics and the replay totals."""
    now = time.time() if now is None else now
    table = Table(title=f"tidal run {status.run_name}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", justify="right")
    eval_text = "-" if status.eval_accuracy is None else f"{status.eval_accuracy:.3f} (step {status.eval_step})"
    for key, value in (
        ("run dir", status.run_dir),
        ("step", f"{status.step}/{status.total_steps}"),
        ("policy version", str(status.policy_version)),
        ("rollout workers", f"{status.workers} (desired {status.desired_workers})"),
        ("eval accuracy", eval_text),
        ("updated", f"{now - status.updated_at:.0f}s ago (running {now - status.started_at:.0f}s)"),
    ):
        table.add_row(key, value)
    table.add_section()
    for key, value in sorted(status.metrics.items()):
        if key != "step":
            table.add_row(key, _number(value))
    table.add_section()
    for key, value in sorted(status.replay.items()):
        if not PER_SHARD_KEY.match(key):  # per-shard detail is `tidal replay stats`'s job
            table.add_row(key, _number(value))
    return table


def render_placement(status: RunStatus) -> Table:
    """One row per live actor: where it runs and what it was given."""
    table = Table(title="placement")
    for column in ("role", "name", "node", "resources", "GPU ids", "CUDA_VISIBLE_DEVICES"):
        table.add_column(column)
    for entry in status.placement:
        resources = ", ".join(f"{k} {v:g}" for k, v in entry["resources"].items())
        table.add_row(entry["role"], entry["name"], entry["node_address"], resources,
                      ",".join(entry["gpu_ids"]) or "-", entry["cuda_visible_devices"] or "-")
    return table


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _status(args: argparse.Namespace) -> int:
    status = ray.get(find_controller(args.address).status.remote(), timeout=10)
    console = Console(width=100)
    console.print(render_status(status))
    if status.placement:
        console.print(render_placement(status))
    return 0


def _scale(args: argparse.Namespace) -> int:
    try:
        previous = ray.get(find_controller(args.address).scale.remote(args.rollout_workers), timeout=10)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, PlacementError):  # more workers than the cluster holds: its own message says so
            raise e.cause from None
        raise
    print(f"rollout workers: desired {previous} -> {args.rollout_workers}; the driver applies it after its "
          "current learner step (`tidal status` shows the live count)")
    return 0


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (worker 0 also evaluates), got {value}")
    return value


def register(subparsers) -> None:
    """Add `status` and `scale` to the `tidal` argparse subcommands."""
    status = subparsers.add_parser("status", help="show the live run's progress, metrics and replay totals")
    status.add_argument("--address", help=GCS_ADDRESS_HELP)
    status.set_defaults(func=_status)

    scale = subparsers.add_parser("scale", help="resize the live run's rollout fleet")
    scale.add_argument("--rollout-workers", type=_at_least_one, required=True, metavar="N")
    scale.add_argument("--address", help=GCS_ADDRESS_HELP)
    scale.set_defaults(func=_scale)
