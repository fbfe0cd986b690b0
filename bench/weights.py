"""Weight sync: seconds from the learner publishing new weights to every rollout engine serving them,
for both backends (object store, collective), 1 and 2 workers, on the demo model and on a ~30M
parameter model, against an in-process state-dict copy of the same model (the floor).

Real parts: a DeepSpeed learner rank (its own `publish`: replay version, weights out of DeepSpeed,
then ray.put, or the collective broadcaster), rollout workers with vLLM engines, the weight channel.
The latency of one update is measured from the publish call until every worker's `sync_weights`
has returned (the engine holds the new version). Ours and the copy alternate round by round,
medians reported. Writes bench/results/weights.json and prints a table.

    tidal bench weights            # demo and ~30M models (~6 minutes on 2 cores)
    tidal bench weights --quick    # the demo model only, fewer rounds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import ray
import torch

from bench._common import median_ratio, model_path, write_report

RESULTS = Path(__file__).resolve().parent / "results" / "weights.json"


def state_dict_copy_s(path: str) -> callable:
    """The floor: copying the model's state dict in one process."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)

    def copy() -> float:
        started = time.perf_counter()
        {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        return time.perf_counter() - started

    return copy


def start_actors(path: str, backend: str, shard_urls: list[str]):
    from actors.config import EnvConfig, RolloutConfig
    from actors.rollout_worker import RemoteRolloutWorker
    from buffer import ReplayConfig, create_table
    from buffer.weight_transport import WeightSyncConfig
    from cluster.admission import RemoteAdmissionController
    from cluster.weight_channel import WeightChannel
    from envs import CurriculumConfig
    from learner.config import LearnerConfig
    from learner.learner_actor import RemoteLearner
    from learner.loss_config import PolicyLossConfig

    weights = WeightSyncConfig(backend=backend)
    replay = ReplayConfig(namespace=f"bench-weights-{uuid.uuid4().hex[:6]}")
    create_table(replay, shard_urls)
    channel = WeightChannel.remote()
    admission = RemoteAdmissionController.remote(16, 4, CurriculumConfig(), [], 0)
    learner = RemoteLearner.options(num_cpus=1).remote(0, 1, path, LearnerConfig(), PolicyLossConfig(), replay,
                                                       shard_urls, channel, 10, weights)
    address, port = ray.get(learner.rendezvous_address.remote())
    ray.get(learner.setup.remote(address, port), timeout=600)

    def worker(index: int):
        handle = RemoteRolloutWorker.options(num_cpus=1, max_concurrency=4).remote(
            f"w{index}", path, RolloutConfig(), EnvConfig(), replay, shard_urls, channel, admission, index, weights)
        ray.get(handle.stats.remote(), timeout=600)
        return handle

    return learner, worker


def publish_and_serve_s(learner, workers: list) -> float:
    """One new version: from the learner's publish until every engine serves it."""
    started = time.perf_counter()
    # (a lambda: Ray ships it by value; the bench package is not importable in the actors)
    ray.get(learner.__ray_call__.remote(lambda self: (setattr(self, "version", self.version + 1), self.publish())),
            timeout=120)
    ray.get([w.sync_weights.remote() for w in workers], timeout=120)
    return time.perf_counter() - started


def measure(path: str, params: int, backend: str, rounds: int, shard_urls: list[str]) -> list[dict]:
    copy = state_dict_copy_s(path)
    learner, worker = start_actors(path, backend, shard_urls)
    workers = [worker(0)]
    rows = []
    for count in (1, 2):
        while len(workers) < count:
            workers.append(worker(len(workers)))
        publish_and_serve_s(learner, workers)  # warm: first transfer, connections, allocator
        ours, floor = [], []
        for _ in range(rounds):  # alternate: load on the machine hits both alike
            ours.append(publish_and_serve_s(learner, workers))
            floor.append(copy())
        sync = [s["weight_sync_last_s"] for s in ray.get([w.stats.remote() for w in workers])]
        rows.append({"backend": backend, "workers": count, "params": params,
                     "seconds_median": statistics.median(ours), "copy_seconds_median": statistics.median(floor),
                     "ratio_to_copy": median_ratio(ours, floor),
                     "worker_load_s_last": sync})
        print(f"weights: {params / 1e6:.1f}M {backend} {count} worker(s): {rows[-1]['seconds_median']:.3f}s, "
              f"copy {rows[-1]['copy_seconds_median']:.4f}s, ratio {rows[-1]['ratio_to_copy']:.1f}", file=sys.stderr)
    for handle in [learner, *workers]:
        ray.kill(handle)
    return rows


def main(argv: list[str] | None = None) -> int:
    from buffer import start_local_shards, stop_local_shards
    from cluster.driver import ACTOR_ENV

    parser = argparse.ArgumentParser(prog="tidal bench weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the demo model only, 3 rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    models = ["demo"] if args.quick else ["demo", "30M"]
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(1)
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="tidal-weights-") as root:
        shards = start_local_shards(1, Path(root) / "redis")
        ray.init(num_cpus=8, include_dashboard=False, runtime_env={"env_vars": ACTOR_ENV}, log_to_driver=False,
                 logging_level="ERROR")
        try:
            for name in models:
                path, params = model_path(name, Path(root))
                for backend in ("object_store", "collective"):
                    results += [{"model": name, **row} for row in measure(path, params, backend, rounds,
                                                                           [s.url for s in shards])]
        finally:
            ray.shutdown()
            stop_local_shards(shards)
    write_report(args.out, {"rounds": rounds, "models": models}, started, results)
    for row in results:
        print(f"{row['model']:>5} {row['params'] / 1e6:6.1f}M {row['backend']:>12} x{row['workers']}: "
              f"{row['seconds_median']:.3f}s (copy {row['copy_seconds_median']:.4f}s, {row['ratio_to_copy']:.1f}x)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
