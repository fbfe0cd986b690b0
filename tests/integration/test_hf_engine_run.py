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
from tests.first_digit_reference import first_digit_accuracy

pytestmark = pytest.mark.integration

STEPS = 4
PROBED = 6  # tasks the parity probe samples
FIRST_DIGITS = "12345"  # a second evaluation env, whose measure is far from 0 (exact correctness is near it)


def test_a_run_on_the_transformers_engine_trains_and_serves_the_new_weights(tmp_path):
    model_path = build_demo_model(cache_dir=tmp_path / "models", settings=DemoModelSettings(
        warm_start=AdditionWarmStart(clean_steps=20, noisy_steps=5)))
    cfg = load_config(None, {
        "name": "hf-engine-test", "run_root": str(tmp_path / "runs"), "steps": STEPS, "model": {"path": str(model_path)},
        "rollout": {"num_workers": 1, "groups_in_flight": 4, "engine": {"kind": "transformers"}},
        "learner": {"groups_per_step": 4}, "ray": {"include_dashboard": False, "num_cpus": 4},
        "eval": {"greedy": False, "envs": [{"name": "arithmetic"}, {"name": "first_digit", "suffix": "_first_digit",
                                                                  "params": {"targets": FIRST_DIGITS}}]},
    })
    run_dir = tmp_path / "runs" / "hf"
    run_dir.mkdir(parents=True)
    with ExitStack() as stack, Progress(STEPS) as progress:
        live = start_run(cfg, run_dir, stack, progress)
        records = [learner_step(live) for _ in range(STEPS)]
        worker = live.workers.ready[0].handle
        assert ray.get(worker.sync_weights.remote()) == records[-1]["policy_version"] == STEPS
        probe = ray.get(worker.probe.remote(PROBED))
        recomputed = live.learners.call_rank0("recompute_logprobs", [p["token_ids"] for p in probe])
        evaluation = evaluate(live)
        reference = first_digit_accuracy(live, FIRST_DIGITS)
        expected, sd = reference["sampled"], reference["sampled_sd"]
    assert all(r["groups"] == 4 and np.isfinite(r["loss"]) for r in records)
    # probe() drops failed episodes, and a mask without model tokens compares nothing: all probed, each sampled
    assert len(probe) == PROBED
    for sample, learner_logprobs in zip(probe, recomputed, strict=True):
        assert sample["policy_version"] == STEPS
        mask = np.array(sample["loss_mask"], bool)
        assert mask.any()
        completion = np.array(learner_logprobs)[sample["prompt_len"] - 1:]
        np.testing.assert_allclose(np.array(sample["logprobs"])[mask], completion[mask], atol=1e-3)
    # Each env's own measure: exact correctness is the arithmetic env's whole reward, so its accuracy is the
    # mean return; first_digit's is the learner's own, within 4 standard deviations of its expected value.
    assert evaluation["eval_policy_version"] == evaluation["eval_policy_version_first_digit"] == STEPS
    assert evaluation["eval_failed"] == 0.0 and evaluation["eval_accuracy"] == evaluation["eval_return"]
    assert abs(evaluation["eval_accuracy_first_digit"] - expected) <= 4 * sd, (expected, sd)
    assert not [key for key in evaluation if key.endswith("_greedy")]  # eval.greedy: false
