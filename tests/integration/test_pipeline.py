"""The whole loop on real parts: Ray actors, vLLM engines, Redis shards, a DeepSpeed learner.

One shortened run, driven step by step with the driver's own functions, on the trivially
learnable `first_digit` env (reward 1 when the answer starts with one of the target digits).
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pytest
import ray

from cluster.config import load_config
from cluster.demo_model import build_demo_model
from cluster.driver import checkpoint, evaluate, learner_step, start_run
from cluster.progress import Progress
from cluster.warm_start import AdditionWarmStart, DemoModelSettings
from tests.first_digit_reference import first_digit_accuracy

pytestmark = pytest.mark.integration

STEPS = 12
PROBED = 6  # tasks the parity probe samples
TARGETS = "12"  # first_digit's targets


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    model_path = build_demo_model(cache_dir=root / "models", settings=DemoModelSettings(
        warm_start=AdditionWarmStart(clean_steps=40, noisy_steps=10)))
    cfg = load_config(None, {
        "name": "pipeline-test", "run_root": str(root / "runs"), "steps": STEPS, "model": {"path": str(model_path)},
        "env": {"name": "first_digit", "params": {"targets": TARGETS}},
        "rollout": {"num_workers": 2, "groups_in_flight": 4, "group_size": 8, "sampling": {"max_new_tokens": 4}},
        "learner": {"groups_per_step": 8, "optim": {"lr": 2e-3}},
        "replay": {"max_times_sampled": 1},
        "ray": {"include_dashboard": False, "num_cpus": 6},
    })
    run_dir = root / "runs" / "pipeline"
    run_dir.mkdir(parents=True)
    with ExitStack() as stack, Progress(STEPS) as progress:
        live = start_run(cfg, run_dir, stack, progress)
        records, versions_seen = [], []
        for step in range(1, STEPS + 1):
            records.append(learner_step(live))
            versions_seen.append([s["policy_version"] for s in live.workers.stats()])
            if step % 5 == 0:
                checkpoint(live, step)
        worker_stats = live.workers.stats()
        # Parity: the learner no longer steps, so its weights are the latest published version.
        evaluator = live.workers.ready[0].handle
        ray.get(evaluator.sync_weights.remote())
        probe = ray.get(evaluator.probe.remote(PROBED))
        recomputed = live.learners.call_rank0("recompute_logprobs", [p["token_ids"] for p in probe])
        yield {"run_dir": run_dir, "records": records, "versions_seen": versions_seen, "worker_stats": worker_stats,
               "probe": probe, "recomputed": recomputed, "learner_version": records[-1]["policy_version"],
               "eval": evaluate(live), "accuracy": first_digit_accuracy(live, TARGETS),
               "ledger": live.replay.audit()}


def test_groups_from_both_workers_reach_the_learner_through_redis(run):
    assert all(s["groups"] > 0 for s in run["worker_stats"])
    assert max(r["producers"] for r in run["records"]) >= 2
    assert sum(r["groups"] for r in run["records"]) == STEPS * 8


def test_worker_policy_versions_advance(run):
    first = min(run["versions_seen"][0])
    last = min(run["versions_seen"][-1])
    assert last > first
    assert run["learner_version"] == STEPS, [(r["policy_version"], r["step_applied"], r["loss"]) for r in run["records"]]


def test_engine_logprobs_match_learner_after_weight_updates(run):
    # probe() drops failed episodes, and an empty completion compares nothing: all were probed, each sampled
    assert len(run["probe"]) == PROBED
    for sample, learner_logprobs in zip(run["probe"], run["recomputed"], strict=True):
        assert sample["policy_version"] == run["learner_version"] > 0
        assert any(sample["loss_mask"])
        p = sample["prompt_len"]
        # learner_logprobs[t] is the logprob of token t + 1: completion token j sits at p - 1 + j
        aligned = np.array(learner_logprobs[p - 1: p - 1 + len(sample["logprobs"])])
        np.testing.assert_allclose(np.array(sample["logprobs"]), aligned, atol=1e-3)


def test_reward_goes_up_on_a_trivially_learnable_env(run):
    rewards = [r["reward_mean"] for r in run["records"]]
    first, last = np.mean(rewards[:3]), np.mean(rewards[-3:])
    assert last > first + 0.15, f"reward did not rise: first steps {rewards[:3]}, last steps {rewards[-3:]}"


def test_evaluation_reports_the_envs_own_measure(run):
    """first_digit's accuracy: its reward is 1 exactly when an episode succeeds, so the sampled accuracy is
    the mean return; both passes agree with the accuracy counted on the learner's weights (sampled: within
    4 standard deviations of its expected value; greedy: an engine tie may flip a prompt or two)."""
    evaluation, expected = run["eval"], run["accuracy"]
    assert evaluation["eval_policy_version"] == STEPS and evaluation["eval_failed"] == 0.0
    assert evaluation["eval_accuracy"] == evaluation["eval_return"]
    assert abs(evaluation["eval_accuracy"] - expected["sampled"]) <= 4 * expected["sampled_sd"], expected
    assert abs(evaluation["eval_accuracy_greedy"] - expected["greedy"]) <= 2 / 256, expected


def test_learner_checkpoints_when_asked_and_keeps_the_newest(run):
    tags = sorted(p.name for p in (run["run_dir"] / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step10", "step5"]  # keep: 2


def test_the_ledger_accounts_for_every_acknowledged_group(run):
    ledger = run["ledger"]
    assert ledger.total("acked") > STEPS * 8 and ledger.total("unaccounted") == 0
    assert ledger.total("trained_uses") == STEPS * 8 and ledger.most_times_trained == 1 == ledger.max_times_sampled
