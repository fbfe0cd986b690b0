"""The run's numbers on Ray's Prometheus endpoint (what the dashboard's metrics views and Grafana
read), scraped while a shortened demo run is live. Ray prefixes every series with `ray_`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.ray_head import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EXPECTED = ("tidal_reward_mean", "tidal_staleness_mean", "tidal_learner_tokens_per_s", "tidal_time_train_s",
            "tidal_replay_size", "tidal_replay_inserts", "tidal_replay_shard_size", "tidal_replay_shard_priority_mass",
            "tidal_worker_tokens_per_s", "tidal_worker_groups_per_s", "tidal_worker_weight_sync_s", "tidal_c_high",
            "tidal_eval_accuracy", "tidal_episode_errors", "tidal_workers_alive")


def test_the_runs_series_are_on_rays_prometheus_endpoint(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "cluster.cli", "train", "--set", "steps=400", "--set", "eval.every=5",
               "--set", f"run_root={tmp_path}", "--set", "ray.include_dashboard=false",
               "--set", f"ray.metrics_export_port={port}"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                               start_new_session=True)
    found: set[str] = set()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None and not set(EXPECTED) <= found:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                found = {line.split("{")[0].split(" ")[0].removeprefix("ray_") for line in text.splitlines()
                         if line.startswith("ray_tidal_")}
            except requests.ConnectionError:
                pass
            time.sleep(2)
    finally:
        process.send_signal(2)  # SIGINT: the run stops (and checkpoints)
        process.wait(timeout=180)
    missing = sorted(set(EXPECTED) - found)
    assert not missing, f"missing series {missing}; found {sorted(found)}"
