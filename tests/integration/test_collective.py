"""The collective weight backend on real parts: the learner's rank 0 broadcasts every version to each
rollout worker over a gloo pair group. After updates the engines' logprobs match the learner's; a
worker added mid-run receives weights and produces; a worker killed mid-run does not stop the
learner from publishing to the others."""

from __future__ import annotations

import time
from contextlib import ExitStack

import numpy as np
import pytest
import ray

from cluster.config import load_config
from cluster.demo_model import build_demo_model
from cluster.driver import learner_step, start_run
from cluster.progress import Progress
from cluster.warm_start import AdditionWarmStart, DemoModelSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("collective")
    model_path = build_demo_model(cache_dir=root / "models", settings=DemoModelSettings(
        warm_start=AdditionWarmStart(clean_steps=40, noisy_steps=10)))
    cfg = load_config(None, {
        "name": "collective-test", "run_root": str(root / "runs"), "steps": 100, "model": {"path": str(model_path)},
        "weights": {"backend": "collective", "timeout_s": 20},
        "rollout": {"num_workers": 2, "groups_in_flight": 4, "sampling": {"max_new_tokens": 4}},
        "learner": {"groups_per_step": 8},
        "ray": {"include_dashboard": False, "num_cpus": 8},
    })
    run_dir = root / "runs" / "collective"
    run_dir.mkdir(parents=True)
    with ExitStack() as stack, Progress(cfg.steps) as progress:
        yield start_run(cfg, run_dir, stack, progress)


def _steps(live, count: int) -> list[dict]:
    records = []
    for _ in range(count):
        live.workers.check()
        records.append(live.learners.step(120))
    return records


def test_engines_match_the_learner_after_collective_updates(run):
    records = _steps(run, 6)
    assert records[-1]["policy_version"] == 6
    worker = run.workers.ready[0].handle
    assert ray.get(worker.sync_weights.remote()) == 6  # the broadcast version, loaded
    probed = 6
    probe = ray.get(worker.probe.remote(probed))
    recomputed = run.learners.call_rank0("recompute_logprobs", [p["token_ids"] for p in probe])
    # probe() drops failed episodes, and an empty completion compares nothing: all were probed, each sampled
    assert len(probe) == probed
    for sample, learner_logprobs in zip(probe, recomputed, strict=True):
        assert any(sample["loss_mask"])
        p = sample["prompt_len"]
        aligned = np.array(learner_logprobs[p - 1: p - 1 + len(sample["logprobs"])])
        np.testing.assert_allclose(np.array(sample["logprobs"]), aligned, atol=1e-3)


def test_a_worker_added_mid_run_receives_weights_and_produces(run):
    assert run.workers.resize(3)
    deadline = time.monotonic() + 240
    newest = run.workers.workers[-1]
    while time.monotonic() < deadline:
        _steps(run, 1)
        stats = {s["name"]: s for s in run.workers.stats()}
        joined = stats.get(newest.name, {})
        if joined.get("groups", 0) > 0 and joined.get("policy_version", 0) > 0:
            break
    assert newest.ready and joined["groups"] > 0 and joined["policy_version"] > 0, joined


def test_a_killed_worker_does_not_stop_the_learner_publishing(run):
    victim = run.workers.ready[-1]
    ray.kill(victim.handle, no_restart=True)
    started = time.monotonic()
    before = run.learners.step(120)["policy_version"]
    records = _steps(run, 5)
    assert records[-1]["policy_version"] == before + 5
    assert time.monotonic() - started < 60  # no wait on the dead worker's sends
    survivors = [w for w in run.workers.ready if w.name != victim.name]
    assert ray.get(survivors[0].handle.sync_weights.remote()) == before + 5
