"""Faults on real runs: `tidal train` processes in which a rollout worker, a Redis shard, the learner
rank or the driver is killed with SIGKILL (then resumed), and one stopped with SIGTERM. The short
version of `tidal bench faults`: each run must complete with every acknowledged group accounted for
and every step recorded once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.faults import run_config, run_with_fault

pytestmark = pytest.mark.integration

STEPS, KILL_STEP = 30, 12


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


def _assert_survived(result) -> None:
    assert result.completed, result
    assert result.ledger["unaccounted"] == 0 and result.ledger["over_trained"] == 0, result.ledger
    assert result.ledger["acked"] > 0 and result.ledger["trained_uses"] >= STEPS * 16  # 16 groups a step
    assert result.duplicate_steps == 0


def test_a_killed_rollout_worker_is_replaced(root):
    result = run_with_fault("worker", STEPS, KILL_STEP, 0, root)
    _assert_survived(result)
    assert result.worker_restarts >= 1


def test_a_killed_shard_is_restarted_on_its_data(root):
    result = run_with_fault("shard", STEPS, KILL_STEP, 0, root)
    _assert_survived(result)
    assert result.recover_s is not None


def test_a_killed_learner_restarts_from_the_latest_checkpoint(root):
    """Recovered (recover_s) means the metrics went back to the newest checkpoint at the kill (step 10 or
    later: checkpoints every 10 steps, the kill after step 12): its records up to it kept, the later ones
    trained again, and the run went on past the kill."""
    result = run_with_fault("learner", STEPS, KILL_STEP, 0, root)
    _assert_survived(result)
    assert result.restored_from >= 10 and result.recover_s is not None, result


def test_a_killed_driver_leaves_nothing_once_resumed(root):
    result = run_with_fault("driver", STEPS, KILL_STEP, 0, root)
    _assert_survived(result)
    assert result.leftover_after_resume == 0


def test_sigterm_writes_a_final_checkpoint_and_says_how_to_resume(root):
    run_root = root / "sigterm"
    run_root.mkdir()
    config = run_root / "config.yaml"
    config.write_text(yaml.safe_dump(run_config(200, run_root, 0) | {"checkpoint": {"every_steps": 0, "every_s": 0}}))
    process = subprocess.Popen([sys.executable, "-m", "cluster.cli", "train", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    metrics = None
    while time.monotonic() < deadline:
        runs = [p for p in run_root.iterdir() if p.is_dir() and not p.is_symlink()]
        metrics = runs[0] / "metrics.jsonl" if runs else None
        if metrics is not None and metrics.is_file() and len(metrics.read_text().splitlines()) > 5:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 143, output[-2000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert f"checkpoint of step {steps[-1]} saved" in output, output[-2000:]
    assert f"--resume {metrics.parent}" in output
    assert (metrics.parent / "checkpoints" / "latest").read_text().strip() == f"step{steps[-1]}"
