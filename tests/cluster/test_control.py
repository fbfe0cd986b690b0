"""The run controller through a real local Ray: status round-trip, scaling, `tidal status/scale/replay
stats` end to end (real Redis shards), and the pure worker-reconciliation rule by hand."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial

import numpy as np
import pytest
import ray
import redis

from buffer import (ConfigMismatchError, Group, ReplayClient, ReplayConfig, Trajectory, create_table,
                    start_local_shards, stop_local_shards)
from cluster import replay_cli, status_cli
from cluster.errors import ControlError, RunNotFoundError
from cluster.control import (CONTROLLER_NAME, NAMESPACE, RunStatus, find_controller,
                             start_controller)
from cluster.placement import PlacementConfig, PlacementError, check_capacity
from cluster.scaling import reconcile_workers


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # Own temp dir: this cluster must not become the machine's "auto" cluster (a run may be live here).
    temp_dir = tempfile.mkdtemp(prefix="tc", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, namespace=NAMESPACE, _temp_dir=temp_dir,
             log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    shards = start_local_shards(1, tmp_path_factory.mktemp("redis"))
    yield shards[0]
    stop_local_shards(shards)


@pytest.fixture
def replay_config() -> ReplayConfig:
    return ReplayConfig(namespace=f"test-{uuid.uuid4().hex[:12]}", insert_timeout_s=5.0)


@pytest.fixture
def controller(shard, replay_config):
    handle = start_controller(RunStatus("unit", "/runs/unit", total_steps=10, desired_workers=2),
                              [shard.url], replay_config.namespace)
    yield handle
    ray.kill(handle)
    _wait_until_gone()


def test_scale_past_the_clusters_resources_is_refused_naming_them(shard, replay_config, capsys):
    """This Ray has 2 CPUs and each role asks 1 a process: 2 workers beside 1 learner rank do not fit.
    Refused where `tidal scale` hears it (the run would wait forever for workers Ray cannot place)."""
    handle = start_controller(RunStatus("unit", "/runs/unit", total_steps=10, desired_workers=1), [shard.url],
                              replay_config.namespace, partial(check_capacity, PlacementConfig(), num_ranks=1))
    try:
        assert _cli(status_cli.register, ["scale", "--rollout-workers", "1"]) == 0
        with pytest.raises(PlacementError, match=r"asks for more than the cluster has: 3 CPU \(the cluster has 2\)"):
            _cli(status_cli.register, ["scale", "--rollout-workers", "2"])
        assert ray.get(handle.desired_workers.remote()) == 1
    finally:
        ray.kill(handle)
        _wait_until_gone()
    # A run started at 3 workers (the cluster has since shrunk): scaling down to 2, still too many, is taken.
    handle = start_controller(RunStatus("unit", "/runs/unit", total_steps=10, desired_workers=3), [shard.url],
                              replay_config.namespace, partial(check_capacity, PlacementConfig(), num_ranks=1))
    try:
        assert ray.get(handle.scale.remote(2)) == 3 and ray.get(handle.desired_workers.remote()) == 2
    finally:
        ray.kill(handle)
        _wait_until_gone()


def _wait_until_gone(timeout_s: float = 10.0) -> None:
    """The name is released asynchronously after a kill."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.05)
    raise AssertionError(f"{CONTROLLER_NAME} still registered after {timeout_s}s")


def _cli(register, argv: list[str]) -> int:
    """Parse and run a command the way `tidal` does, with only `register`'s commands."""
    parser = argparse.ArgumentParser(prog="tidal")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _group(group_id: str, rewards: list[float]) -> Group:
    trajectories = [Trajectory(prompt_ids=np.arange(3, dtype=np.int32), completion_ids=np.arange(4, dtype=np.int32),
                               loss_mask=np.ones(4, np.uint8), behavior_logprobs=np.full(4, -0.5, np.float32),
                               policy_versions=np.zeros(4, np.int32), reward=r, task_id="t0") for r in rewards]
    return Group(group_id, "t0", "arith", time.time(), trajectories)


def test_status_round_trip_keeps_the_latest_eval(controller, capsys):
    replay = {"replay/size": 7, "replay/shard0/size": 7, "replay/inserts": 9}
    ray.get(controller.report.remote({"step": 1, "loss": 0.25, "policy_version": 1.0, "eval_accuracy": 0.5,
                                      "note": "not a number"}, 2, replay))
    ray.get(controller.report.remote({"step": 2, "loss": 0.125, "policy_version": 2.0}, 3))
    status = ray.get(find_controller().status.remote())
    assert (status.step, status.policy_version, status.workers) == (2, 2, 3)
    assert status.metrics == {"step": 2, "loss": 0.125, "policy_version": 2.0}
    assert (status.eval_accuracy, status.eval_step) == (0.5, 1)  # kept from the eval step
    assert status.replay == replay  # a report without replay stats keeps the last ones
    assert status.updated_at >= status.started_at

    assert _cli(status_cli.register, ["status"]) == 0
    out = capsys.readouterr().out
    for expected in ("tidal run unit", "2/10", "3 (desired 2)", "0.500 (step 1)", "0.125", "replay/size"):
        assert expected in out
    assert "replay/shard0/size" not in out  # per-shard rows belong to `tidal replay stats`


def test_status_from_another_process_joins_the_runs_cluster(controller):
    """`tidal status` runs in a shell of its own: it must join a cluster that has Ray's token auth on."""
    ray.get(controller.report.remote({"step": 3, "loss": 0.5}, 2))
    address = ray.get_runtime_context().gcs_address
    shell = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # nothing of this process's Ray
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "status", "--address", address],
                            capture_output=True, text=True, timeout=120, env=shell)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tidal run unit" in result.stdout and "3/10" in result.stdout


def test_scale_sets_the_desired_count(controller, capsys):
    assert _cli(status_cli.register, ["scale", "--rollout-workers", "5"]) == 0
    assert "desired 2 -> 5" in capsys.readouterr().out
    assert ray.get(controller.desired_workers.remote()) == 5
    with pytest.raises(ValueError, match="got 0"):
        ray.get(controller.scale.remote(0))
    with pytest.raises(SystemExit) as refused:  # argparse's usage error: exit code 2, the reason on stderr
        _cli(status_cli.register, ["scale", "--rollout-workers", "0"])
    assert refused.value.code == 2
    assert "argument --rollout-workers: must be >= 1 (worker 0 also evaluates), got 0" in capsys.readouterr().err
    assert ray.get(controller.desired_workers.remote()) == 5


def test_a_second_run_on_the_same_cluster_is_refused(controller, replay_config):
    with pytest.raises(ControlError, match="another Tidal run is live"):
        start_controller(RunStatus("other", "/runs/other", 1, 1), [], replay_config.namespace)


def test_no_live_run_is_a_clear_error():
    with pytest.raises(RunNotFoundError, match="no live Tidal run"):
        _cli(status_cli.register, ["status"])
    with pytest.raises(RunNotFoundError, match="no live Tidal run"):
        _cli(replay_cli.register, ["replay", "stats"])


def test_scaling_loop_with_real_actors(controller):
    """What the driver does each step: read the desired count, reconcile, keep the handles."""

    class Worker:  # defined here so that Ray ships it by value (the test module is not importable there)
        def ping(self) -> str:
            return "up"

    remote_worker = ray.remote(num_cpus=0)(Worker)
    stopped = []

    def stop(handle):
        stopped.append(handle)
        ray.kill(handle)

    workers = reconcile_workers([], ray.get(controller.desired_workers.remote()), lambda i: remote_worker.remote(), stop)
    ray.get(controller.scale.remote(4))
    workers = reconcile_workers(workers, ray.get(controller.desired_workers.remote()), lambda i: remote_worker.remote(),
                                stop)
    assert ray.get([w.ping.remote() for w in workers]) == ["up"] * 4
    ray.get(controller.scale.remote(1))
    survivor = workers[0]
    workers = reconcile_workers(workers, ray.get(controller.desired_workers.remote()), lambda i: remote_worker.remote(),
                                stop)
    assert workers == [survivor] and len(stopped) == 3
    assert all(_dies(handle) for handle in stopped)
    assert ray.get(survivor.ping.remote()) == "up"


def _dies(handle, timeout_s: float = 30.0) -> bool:
    """ray.kill is asynchronous: a call right after it may still be served."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            ray.get(handle.ping.remote(), timeout=timeout_s)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.1)
    return False


def test_replay_stats_of_the_live_run_and_of_shards(controller, shard, replay_config, capsys):
    create_table(replay_config, [shard.url])
    with ReplayClient(replay_config, [shard.url]) as client:
        assert client.insert(_group("w:1", [0.0, 1.0])) and client.insert(_group("w:2", [1.0, 0.0]))
    assert _cli(replay_cli.register, ["replay", "stats"]) == 0
    via_run = capsys.readouterr().out
    assert f"0 127.0.0.1:{shard.port}" in via_run and "total" in via_run
    assert _cli(replay_cli.register, ["replay", "stats", "--shards", shard.url,
                                      "--namespace", replay_config.namespace]) == 0
    via_url = capsys.readouterr().out
    size_column = [line for line in via_url.splitlines() if "total" in line][0].split("│")[3]
    assert size_column.strip() == "2"
    assert via_run == via_url


def test_replay_stats_needs_no_config_and_changes_nothing(tmp_path, capsys):
    """An observer leaves the live table's settings byte for byte unchanged (the old clients rewrote
    max_times_sampled and max_staleness on connect)."""
    [shard] = start_local_shards(1, tmp_path)
    config = ReplayConfig(namespace=f"observed-{uuid.uuid4().hex[:8]}", max_times_sampled=3, max_staleness=3)
    create_table(config, [shard.url])
    key = f"{config.namespace}:config"
    with redis.Redis.from_url(shard.url) as conn:
        before = conn.dump(key)
    # the only table on the shard is found without --namespace
    assert _cli(replay_cli.register, ["replay", "stats", "--shards", shard.url]) == 0
    assert "total" in capsys.readouterr().out
    with ReplayClient.observer([shard.url], config.namespace) as observer:
        observer.stats()
    with pytest.raises(ConfigMismatchError, match="max_times_sampled: stored '3', expected '0'"):
        with ReplayClient(ReplayConfig(namespace=config.namespace), [shard.url]) as mismatched:
            mismatched.size()
    with redis.Redis.from_url(shard.url) as conn:
        assert conn.dump(key) == before
    stop_local_shards([shard])


def test_replay_stats_with_no_shard_up_is_a_clear_error(replay_config):
    with pytest.raises(ControlError, match="none of the 1 replay shard"):
        replay_cli.read_replay_stats(["redis://127.0.0.1:1"], replay_config.namespace)


def test_reconcile_workers_by_hand():
    started, stopped = [], []

    def start(index: int) -> str:
        started.append(index)
        return f"w{index}"

    current = ["w0", "w1"]
    assert reconcile_workers(current, 4, start, stopped.append) == ["w0", "w1", "w2", "w3"]
    assert (started, stopped, current) == ([2, 3], [], ["w0", "w1"])  # input untouched
    assert reconcile_workers(["w0", "w1", "w2", "w3"], 1, start, stopped.append) == ["w0"]
    assert stopped == ["w3", "w2", "w1"]  # newest first; w0 (the evaluator) stays
    assert reconcile_workers(["w0"], 1, start, stopped.append) == ["w0"]
    assert (len(started), len(stopped)) == (2, 3)  # no-op: nothing started or stopped
    with pytest.raises(ValueError, match="-1"):
        reconcile_workers(["w0"], -1, start, stopped.append)


def test_restart_budget_by_hand():
    from cluster.scaling import RestartBudget

    budget = RestartBudget(max_restarts=2, window_s=10.0)
    assert budget.allow(0, now=0.0) and budget.allow(0, now=1.0)
    assert not budget.allow(0, now=2.0)  # a third restart within 10 s: the slot keeps crashing
    assert budget.allow(1, now=2.0)  # slots have budgets of their own
    assert budget.allow(0, now=10.5)  # the first restart left the window
    with pytest.raises(ValueError, match="window_s=0"):
        RestartBudget(1, 0)


def test_checkpoint_policy_by_steps_and_by_time():
    from cluster.checkpoints import CheckpointConfig, CheckpointPolicy

    policy = CheckpointPolicy(CheckpointConfig(every_steps=5, every_s=60.0), now=0.0)
    assert not policy.due(4, now=10.0) and policy.due(5, now=10.0)
    policy.saved(5, now=10.0)
    assert not policy.due(6, now=69.0) and policy.due(6, now=70.0)  # a minute since the last one
    off = CheckpointPolicy(CheckpointConfig(every_steps=0, every_s=0), now=0.0)
    assert not off.due(10**6, now=10.0**6)
