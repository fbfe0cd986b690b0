"""GPU placement on a Ray cluster that advertises logical GPUs (`ray start --head --num-gpus 4`):
the logical-GPU demo, shortened, gives every learner rank and rollout worker a GPU of its own, and
a placement the cluster cannot satisfy fails within a bounded time, naming the resource."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests.ray_head import ray_head

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    with ray_head("--num-gpus", "4", "--num-cpus", "6") as head:
        yield head


def _train(cluster, run_root: Path, *settings: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cluster.cli", "train", str(REPO / "configs" / "logical-gpus.yaml"),
               "--set", f"ray.address={cluster.address}", "--set", f"run_root={run_root}", "--set", "steps=4",
               "--set", "eval.every=0", *[arg for s in settings for arg in ("--set", s)]]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=REPO,
                          env={**os.environ, **cluster.environ})


def test_every_rank_and_worker_gets_its_own_gpu(cluster, tmp_path):
    # One CI run (1 in 4 of today's) hung here for 600 s with nothing written, never reproduced
    # alone or after the pipeline tests (about 100 s each). Until it is understood: a second try
    # in a fresh run root, the first one's output shown as a warning for whoever looks into it.
    root = tmp_path / "first"
    try:
        run = _train(cluster, root, timeout_s=300)
    except subprocess.TimeoutExpired as hung:
        warnings.warn(f"the logical-GPU run hung for 300 s; retrying. Its output: {hung.stdout!r:.3000} "
                      f"{hung.stderr!r:.3000}")
        root = tmp_path / "second"
        run = _train(cluster, root, timeout_s=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [run_dir] = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    placement = json.loads((run_dir / "placement.json").read_text())
    roles = sorted(entry["role"] for entry in placement)
    assert roles == ["learner", "learner", "rollout", "rollout"], placement
    gpu_ids = [entry["gpu_ids"] for entry in placement]
    assert all(len(ids) == 1 for ids in gpu_ids) and len({ids[0] for ids in gpu_ids}) == 4, placement  # none shared
    for entry in placement:
        assert entry["cuda_visible_devices"] == entry["gpu_ids"][0] and entry["resources"]["GPU"] == 1.0
        assert entry["node_address"] and entry["node_id"]


@pytest.mark.parametrize(("settings", "expected"), [
    (["placement.learner.num_gpus=3"], "8 GPU (the cluster has 4)"),  # 2 ranks x 3 + 2 workers x 1
    (["placement.learner_strategy=STRICT_SPREAD", "placement.timeout_s=5"], "could not be placed within 5s"),
], ids=["more-than-the-cluster-has", "never-placeable"])
def test_a_placement_the_cluster_cannot_satisfy_fails_naming_it(cluster, tmp_path, settings, expected):
    started = time.monotonic()
    run = _train(cluster, tmp_path, *settings, timeout_s=180)
    assert run.returncode == 1 and expected in run.stderr, run.stderr[-3000:]
    assert time.monotonic() - started < 90
