"""A short run with the transformers engine on real parts (Ray actors, Redis shards, a DeepSpeed
learner): weights published by the learner reach the worker (its version is the learner's), and
what its engine then samples has the learner's own logprobs under those weights."""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pytest
import ray

from cluster.config import load_config
from cluster.demo_model import build_demo_model
from cluster.driver import evaluate, learner_step, start_run
from cluster.progress import Progress
from cluster.warm_start import AdditionWarmStart, DemoModelSettings

pytestmark = pytest.mark.integration

STEPS = 4


def test_a_run_on_the_transformers_engine_trains_and_serves_the_new_weights(tmp_path):
    model_path = build_demo_model(cache_dir=tmp_path / "models", settings=DemoModelSettings(
        warm_start=AdditionWarmStart(clean_steps=20, noisy_steps=5)))
    cfg = load_config(None, {
        "name": "hf-engine-test", "run_root": str(tmp_path / "runs"), "steps": STEPS, "model": {"path": str(model_path)},
        "rollout": {"num_workers": 1, "groups_in_flight": 4, "engine": {"kind": "transformers"}},
        "learner": {"groups_per_step": 4}, "eval": {"greedy": False}, "ray": {"include_dashboard": False, "num_cpus": 4},
    })
    run_dir = tmp_path / "runs" / "hf"
    run_dir.mkdir(parents=True)
    with ExitStack() as stack, Progress(STEPS) as progress:
        live = start_run(cfg, run_dir, stack, progress)
        records = [learner_step(live) for _ in range(STEPS)]
        worker = live.workers.ready[0].handle
        assert ray.get(worker.sync_weights.remote()) == records[-1]["policy_version"] == STEPS
        probe = ray.get(worker.probe.remote(6))
        recomputed = live.learners.call_rank0("recompute_logprobs", [p["token_ids"] for p in probe])
        evaluation = evaluate(live)
    assert all(r["groups"] == 4 and np.isfinite(r["loss"]) for r in records)
    for sample, learner_logprobs in zip(probe, recomputed):
        assert sample["policy_version"] == STEPS
        mask = np.array(sample["loss_mask"], bool)
        completion = np.array(learner_logprobs)[sample["prompt_len"] - 1:]
        np.testing.assert_allclose(np.array(sample["logprobs"])[mask], completion[mask], atol=1e-3)
    assert 0.0 <= evaluation["eval_accuracy"] <= 1.0 and evaluation["eval_policy_version"] == STEPS
    assert not [key for key in evaluation if key.endswith("_greedy")]  # eval.greedy: false
