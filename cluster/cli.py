"""`tidal`: the command line of a run's whole life: train, submit, status, scale, replay, bench."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from buffer import ConfigMismatchError, InsecureShardError, ShardUnavailable
from cluster import replay_cli, status_cli, submit
from cluster.errors import ConfigError, ControlError, RunFailed

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def _train(args: argparse.Namespace) -> int:
    from cluster.config import load_config, load_run_config, parse_overrides

    overrides = parse_overrides(args.set)
    # fails before any service starts
    cfg = (load_config(args.config, overrides) if args.resume is None
           else load_run_config(args.resume, args.config, overrides))
    from cluster.driver import train

    train(cfg, resume_dir=args.resume)
    return 0


def _bench(args: argparse.Namespace) -> int:
    # Imported as the module bench.<name> (not run from a path) so that the benchmark's worker
    # processes can find its functions by name.
    sys.path.insert(0, str(BENCH_DIR.parent))
    # Before transformers is imported (it reads this once): a benchmark loads models many times,
    # and their progress bars would bury its own output.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    module = importlib.import_module(f"bench.{args.name}")
    return int(module.main(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidal", description="Asynchronous RL for language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run a training job (no config: the built-in demo)")
    train.add_argument("config", nargs="?", type=Path, help="YAML run config")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue this run from its latest checkpoint, with the config it saved")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set rollout.num_workers=4 --set learner.optim.lr=1e-6")
    train.set_defaults(func=_train)

    benchmarks = sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))
    bench = commands.add_parser("bench", help=f"run a benchmark from bench/ ({', '.join(benchmarks)})")
    bench.add_argument("name", choices=benchmarks)
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    bench.set_defaults(func=_bench)
    for module in (submit, status_cli, replay_cli):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"tidal: {e}", file=sys.stderr)
        return 2
    # The replay's errors that the user's setup causes (a shard down or not Redis, a wrong password, a
    # table of other settings) name the shard and the fix: a traceback through redis-py adds nothing.
    except (ControlError, RunFailed, ShardUnavailable, InsecureShardError, ConfigMismatchError) as e:
        print(f"tidal: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tidal: interrupted; every actor and Redis process this run started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
