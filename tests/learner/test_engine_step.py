"""One optimizer update under DeepSpeed (one rank, gloo): the metrics it reports, the no-grad pass
run only for BAPO, and the non-finite-loss guard on both paths (the step is skipped without
leaving any state behind; the Learner stops after `max_bad_steps` in a row)."""

from __future__ import annotations

import time
import uuid
import zlib

import numpy as np
import pytest
import torch

from buffer import (Group, ReplayClient, ReplayConfig, SampledGroup, Trajectory, create_table, start_local_shards,
                    stop_local_shards)
from learner.batch import build_batch
from learner.config import LearnerConfig
from learner.engine import PolicyEngine
from learner.learner_actor import Learner, NonFiniteLossError
from learner.loss_config import BAPOConfig, CorrectionConfig, KLConfig, PolicyLossConfig, PPOClipConfig
from learner.step import train_step

CFG = LearnerConfig(zero_stage=2, dtype="float32", groups_per_step=2, max_bad_steps=2, micro_batch_tokens=32)
LOSS = PolicyLossConfig(objective=BAPOConfig(), correction=CorrectionConfig(mode="tis"), kl=KLConfig(coef=0.05))


def _group(group_id: str, behavior: float, rewards=(1.0, 0.0, 1.0), length: int = 5) -> Group:
    rng = np.random.default_rng(zlib.crc32(group_id.encode()))
    trajectories = [Trajectory(prompt_ids=rng.integers(4, 18, 3), completion_ids=rng.integers(4, 18, length),
                               loss_mask=np.ones(length), behavior_logprobs=np.full(length, behavior),
                               policy_versions=np.zeros(length), reward=r) for r in rewards]
    return Group(group_id, "t", "c", time.time(), trajectories)


def _batch(behavior: float, *extra: Group):
    groups = [_group(f"w:{i}", behavior) for i in range(2)] + list(extra)
    samples = [SampledGroup(group, 1.0, 1.0, 1, 0) for group in groups]
    return build_batch(samples, [s.group.rewards - s.group.rewards.mean() for s in samples], pad_id=0)


def _counting_policy_passes(engine: PolicyEngine) -> list[bool]:
    """Records, for every forward of the policy, whether it built a graph."""
    passes, forward = [], engine.token_logprobs

    def counted(*args):
        passes.append(torch.is_grad_enabled())
        return forward(*args)

    engine.token_logprobs = counted
    return passes


def _assert_next_step_is_a_first_step(engine, tiny_model, cfg, loss_cfg, with_reference: bool) -> None:
    """After a skipped step, the next finite one is exactly the first step of a fresh engine: no
    gradient, optimizer or scheduler state leaked from the skipped one."""
    metrics, applied = train_step(engine, _batch(-2.9), loss_cfg, cfg.micro_batch_tokens)
    fresh = PolicyEngine(tiny_model, cfg, total_steps=10, world_size=1, with_reference=with_reference)
    fresh_metrics, _ = train_step(fresh, _batch(-2.9), loss_cfg, cfg.micro_batch_tokens)
    assert applied and metrics["grad_norm"] == pytest.approx(fresh_metrics["grad_norm"], rel=1e-6)
    expected = fresh.named_weights()
    for name, weight in engine.named_weights().items():
        torch.testing.assert_close(weight, expected[name], rtol=0, atol=1e-7)


@pytest.fixture
def engine(tiny_model, single_rank):
    return PolicyEngine(tiny_model, CFG, total_steps=10, world_size=1, with_reference=True)


def test_a_step_reports_the_loss_metrics_and_moves_the_weights(engine):
    before = engine.named_weights()
    metrics, applied = train_step(engine, _batch(-2.9), LOSS, CFG.micro_batch_tokens)
    assert applied
    for key in ["loss", "entropy", "clip_frac_low", "clip_frac_high", "c_low", "c_high", "bapo_rho",
                "pos_grad_share", "neg_grad_share", "kl", "tis_weight_mean", "tis_frac_capped",
                "logprob_mismatch", "grad_norm"]:
        assert np.isfinite(metrics[key]), key
    assert metrics["pos_grad_share"] + metrics["neg_grad_share"] == pytest.approx(1.0)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-9)  # first step: the policy IS the reference
    assert 0.0 < metrics["grad_norm"] and 0.0 <= metrics["clip_frac_low"] <= 1.0
    after = engine.named_weights()
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_a_nan_loss_skips_the_step_and_leaves_no_trace(tiny_model, engine):
    before = engine.named_weights()
    metrics, applied = train_step(engine, _batch(float("nan")), LOSS, CFG.micro_batch_tokens)
    assert not applied and np.isnan(metrics["loss"]) and np.isnan(metrics["grad_norm"])
    after = engine.named_weights()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert engine.engine.global_steps == 0 and engine.lr == CFG.optim.lr
    _assert_next_step_is_a_first_step(engine, tiny_model, CFG, LOSS, with_reference=True)


def test_only_bapo_pays_a_no_grad_pass_and_both_paths_make_the_same_update(tiny_model, single_rank):
    """BAPO with its bound ranges collapsed to PPO-clip's fixed bounds is the same objective; it goes
    through the no-grad pass (bounds before the first loss), PPO-clip with TIS and KL does not."""
    fixed_bapo = BAPOConfig(a_minus=0.8, b_minus=0.8, a_plus=1.28, b_plus=1.28)
    correction, kl = CorrectionConfig(mode="tis"), KLConfig(coef=0.05)
    results = {}
    for name, objective in {"bapo": fixed_bapo, "ppo_clip": PPOClipConfig(eps_low=0.2, eps_high=0.28)}.items():
        engine = PolicyEngine(tiny_model, CFG, total_steps=10, world_size=1, with_reference=True)
        passes = _counting_policy_passes(engine)
        loss_cfg = PolicyLossConfig(objective=objective, correction=correction, kl=kl)
        metrics, applied = train_step(engine, _batch(-2.9), loss_cfg, CFG.micro_batch_tokens)
        assert applied and metrics["time/forward_backward_s"] > 0 and metrics["time/optimizer_s"] > 0
        results[name] = (metrics, engine.named_weights(), passes)
    (bapo, bapo_weights, bapo_passes), (ppo, ppo_weights, ppo_passes) = results["bapo"], results["ppo_clip"]
    micro_batches = int(ppo["micro_batches"])
    assert ppo_passes == [True] * micro_batches
    assert bapo_passes == [False] * micro_batches + [True] * micro_batches
    for key in ("loss", "grad_norm", "tis_weight_mean", "kl", "clip_frac_high", "entropy"):
        assert ppo[key] == pytest.approx(bapo[key], rel=1e-6, abs=1e-9), key
    for name, weight in ppo_weights.items():
        torch.testing.assert_close(weight, bapo_weights[name], rtol=0, atol=1e-7)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_a_nan_in_a_later_micro_batch_drops_the_gradients_already_accumulated(tiny_model, single_rank, stage):
    """Without the no-grad pass, the first micro-batch is backpropagated before the NaN in the second
    is seen: the step must still be skipped with nothing left over for the next one."""
    cfg = CFG.model_copy(update={"zero_stage": stage})
    loss_cfg = PolicyLossConfig()
    engine = PolicyEngine(tiny_model, cfg, total_steps=10, world_size=1)
    passes = _counting_policy_passes(engine)
    before = engine.named_weights()
    poisoned = _batch(-2.9, _group("w:nan", float("nan"), length=3))  # its rows sort into the last micro-batch
    metrics, applied = train_step(engine, poisoned, loss_cfg, cfg.micro_batch_tokens)
    assert not applied and np.isnan(metrics["loss"]) and passes == [True, True]  # one backward done, then the NaN
    assert all(torch.equal(before[name], weight) for name, weight in engine.named_weights().items())
    _assert_next_step_is_a_first_step(engine, tiny_model, cfg, loss_cfg, with_reference=False)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_a_non_finite_gradient_under_a_finite_loss_is_not_applied(tiny_model, single_rank, stage):
    """A backward can overflow where the loss did not (bf16, a huge logit gradient): the update is
    skipped and reported as not applied, at every stage, with nothing left for the next step."""
    cfg = CFG.model_copy(update={"zero_stage": stage})
    engine = PolicyEngine(tiny_model, cfg, total_steps=10, world_size=1)
    before = engine.named_weights()
    param = next(p for name, p in engine.engine.module.named_parameters() if "layers.0.mlp.up_proj" in name)
    overflow = param.register_hook(lambda grad: grad * float("inf"))
    metrics, applied = train_step(engine, _batch(-2.9), PolicyLossConfig(), cfg.micro_batch_tokens)
    overflow.remove()
    assert not applied and np.isfinite(metrics["loss"]) and not np.isfinite(metrics["grad_norm"])
    assert all(torch.equal(before[name], weight) for name, weight in engine.named_weights().items())
    assert engine.lr == cfg.optim.lr  # the schedule did not move either
    _assert_next_step_is_a_first_step(engine, tiny_model, cfg, PolicyLossConfig(), with_reference=False)


def test_stage_0_reports_the_same_gradient_norm_as_zero_2(tiny_model, single_rank):
    """At stage 0 DeepSpeed does not measure the norm; Tidal's pre-step hook does (before clipping)."""
    norms = []
    for stage in (0, 2):
        engine = PolicyEngine(tiny_model, CFG.model_copy(update={"zero_stage": stage}), 10, 1)
        norms.append(train_step(engine, _batch(-2.9), PolicyLossConfig(), CFG.micro_batch_tokens)[0]["grad_norm"])
    assert norms[0] > CFG.optim.grad_clip  # clipping is active, and the norm reported is the one before it
    assert norms[0] == pytest.approx(norms[1], rel=1e-6)


@pytest.fixture
def replay(tmp_path):
    shards = start_local_shards(1, tmp_path / "redis")
    config = ReplayConfig(namespace=f"test-{uuid.uuid4().hex[:8]}", num_shards=1, max_staleness=100)
    create_table(config, [s.url for s in shards])
    yield config, [s.url for s in shards]
    stop_local_shards(shards)


def test_the_learner_stops_after_max_bad_steps_non_finite_losses_in_a_row(tiny_model, single_rank, replay, caplog):
    config, urls = replay
    producer = ReplayClient(config, urls)
    for i in range(4):
        producer.insert(_group(f"w:{i}", float("nan")))
    learner = Learner(0, 1, tiny_model, CFG, LOSS, config, urls, channel=None, total_steps=10)
    learner.setup("127.0.0.1", 0)
    before = learner.engine.named_weights()
    first = learner.train_step()
    assert first["step_applied"] == 0.0 and first["policy_version"] == 0 and np.isnan(first["loss"])
    assert "non-finite loss or gradient (1 in a row, limit 2)" in caplog.text
    with pytest.raises(NonFiniteLossError, match="2 consecutive steps"):
        learner.train_step()
    after = learner.engine.named_weights()
    assert all(torch.equal(before[name], after[name]) for name in before)
    producer.close()
