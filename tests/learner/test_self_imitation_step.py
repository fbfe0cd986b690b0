"""The Learner's update with SPEAR self-imitation wired in (one rank, gloo, real Redis shard, real Ray
channel): good trajectories enter the buffer after an applied step, the next step replays them with
the weighted clipped loss, without self-imitation the step is the plain one, and a checkpoint keeps
the buffer and the random streams. Also: Clip-Cov in the main loss, and the stop on non-finite gradients."""

from __future__ import annotations

import time
import uuid
import zlib

import numpy as np
import pytest
import ray
import torch

from buffer import Group, ReplayConfig, SampledGroup, Trajectory, create_table, start_local_shards, stop_local_shards
from cluster.weight_channel import WeightChannel
from learner.advantages import compute_advantages
from learner.batch import build_batch
from learner.config import LearnerConfig
from learner.engine import PolicyEngine
from learner.learner_actor import Learner, NonFiniteLossError
from learner.losses import clip_cov_selection
from learner.loss_config import ClipCovConfig, PolicyLossConfig, SelfImitationConfig
from learner.step import train_step

BEHAVIOR = -2.9
LOSS = PolicyLossConfig()
PLAIN = LearnerConfig(zero_stage=2, dtype="float32", groups_per_step=2, micro_batch_tokens=32)
SIL = PLAIN.model_copy(update={"self_imitation": SelfImitationConfig(coef=0.5, warmup_steps=0),
                               "self_imitation_samples": 8})


def _samples(step: int) -> list[SampledGroup]:
    def group(group_id: str) -> Group:
        rng = np.random.default_rng(zlib.crc32(group_id.encode()))
        trajectories = [Trajectory(prompt_ids=rng.integers(4, 18, 3), completion_ids=rng.integers(4, 18, 5),
                                   loss_mask=np.ones(5), behavior_logprobs=np.full(5, BEHAVIOR),
                                   policy_versions=np.full(5, step), reward=r) for r in (1.0, 0.0, 1.0)]
        return Group(group_id, "t", "c", time.time(), trajectories)

    return [SampledGroup(group(f"w:{step}-{i}"), 1.0, 1.0, 1, 0) for i in range(2)]


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    shards = start_local_shards(1, tmp_path_factory.mktemp("redis"))
    config = ReplayConfig(namespace=f"test-{uuid.uuid4().hex[:8]}", num_shards=1, max_staleness=100)
    create_table(config, [s.url for s in shards])
    yield config, [s.url for s in shards]
    stop_local_shards(shards)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture
def channel(local_ray):
    """A fresh channel per learner: each one publishes versions from 1."""
    return WeightChannel.remote()


def _learner(tiny_model, cfg: LearnerConfig, replay, channel, loss: PolicyLossConfig = LOSS) -> Learner:
    config, urls = replay
    learner = Learner(0, 1, tiny_model, cfg, loss, config, urls, channel=channel, total_steps=10)
    learner.setup("127.0.0.1", 0)
    return learner


def _expected_replay_loss(learner: Learner) -> float:
    """coef * token-mean of -min(rA, clip(r, 0.8, 1.28) A) over the buffer, at the current weights."""
    entries = learner.imitation.refresh(learner.version)
    trajectories = [e.trajectory for e in entries]
    group = Group("expected", "", "", 0.0, trajectories)
    advantages = np.array([e.advantage for e in entries])
    batch = build_batch([SampledGroup(group, 1.0, 1.0, 0, 0)], [advantages], pad_id=learner.pad_id)
    with torch.no_grad():
        logprobs, _ = learner.engine.token_logprobs(batch.input_ids, batch.attention_mask)
    mask = batch.loss_mask.numpy() > 0
    ratio = np.exp(logprobs.double().numpy()[mask] - batch.behavior_logprobs.double().numpy()[mask])
    adv = batch.advantages.double().numpy()[mask]
    per_token = -np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.28) * adv)
    return 0.5 * per_token.mean()


def test_good_trajectories_are_remembered_then_replayed(tiny_model, single_rank, replay, channel):
    learner = _learner(tiny_model, SIL, replay, channel)
    first = learner.train_on(_samples(0))
    assert first["step_applied"] == 1.0
    assert first["sil/num_replayed"] == 0.0 and first["sil/loss"] == 0.0  # nothing to replay yet
    # Both groups have mean 2/3, so the baseline is 2/3: the four reward-1 trajectories (A = 1/3) are kept.
    entries = learner.imitation.refresh(learner.version)
    assert first["sil/buffer_size"] == 4 and len(entries) == 4
    assert all(e.trajectory.reward == 1.0 and e.policy_version == 0 for e in entries)
    assert [e.advantage for e in entries] == pytest.approx([1 / 3] * 4)

    expected = _expected_replay_loss(learner)  # every entry is replayed (8 asked, 4 held)
    second = learner.train_on(_samples(1))
    assert second["step_applied"] == 1.0 and second["sil/num_replayed"] == 4.0
    assert second["sil/weight"] == 0.5  # coef, no warm-up
    assert np.isfinite(second["sil/loss"]) and second["sil/loss"] == pytest.approx(expected, rel=1e-4)
    assert second["loss"] == pytest.approx(second["loss/total"] + second["sil/loss"])
    assert second["sil/buffer_size"] == 8  # the new batch's four good trajectories joined


def test_stale_entries_are_no_longer_replayed(tiny_model, single_rank, replay, channel):
    cfg = SIL.model_copy(update={"self_imitation": SelfImitationConfig(warmup_steps=0, max_staleness=0)})
    learner = _learner(tiny_model, cfg, replay, channel)
    learner.train_on(_samples(0))
    assert len(learner.imitation) == 4
    second = learner.train_on(_samples(0))  # at version 1 the version-0 entries are one version too old
    assert second["sil/num_replayed"] == 0.0


def test_without_self_imitation_the_step_is_the_plain_one(tiny_model, single_rank, replay, channel):
    learner = _learner(tiny_model, PLAIN, replay, channel)
    samples = _samples(0)
    metrics = learner.train_on(samples)
    assert learner.imitation is None and not [key for key in metrics if key.startswith("sil/")]
    engine = PolicyEngine(tiny_model, PLAIN, total_steps=10, world_size=1)
    advantages = [compute_advantages("grpo", torch.tensor(s.group.rewards)).numpy() for s in samples]
    plain, applied = train_step(engine, build_batch(samples, advantages, pad_id=learner.pad_id), LOSS,
                                PLAIN.micro_batch_tokens)
    assert applied and metrics["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert metrics["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-6)


# A window wide enough that the tiny model's tokens are candidates, so that the random choice is made.
CLIP_COV = PolicyLossConfig(clip_cov=ClipCovConfig(fraction=0.5, cov_low=-5.0))


def _clip_cov_step(tiny_model, replay, monkeypatch, seed: int) -> tuple[dict, list[tuple[torch.Tensor, ...]]]:
    """One step of a learner seeded `seed`, with CLIP_COV in the main loss: its metrics, and for each
    micro-batch the tokens Clip-Cov stopped and the loss mask it chose them from (recorded as chosen)."""
    chosen = []

    def recording(cov, unclipped, mask, cfg, generator):
        stopped = clip_cov_selection(cov, unclipped, mask, cfg, generator)
        chosen.append((stopped.clone(), mask > 0))
        return stopped

    monkeypatch.setattr("learner.losses.loss.clip_cov_selection", recording)
    learner = _learner(tiny_model, PLAIN.model_copy(update={"seed": seed}), replay, WeightChannel.remote(), CLIP_COV)
    return learner.train_on(_samples(0)), chosen


def test_clip_cov_in_the_main_loss_stops_a_random_share_of_the_tokens(tiny_model, single_rank, replay, local_ray,
                                                                      monkeypatch):
    """fraction 0.5 of each micro-batch's masked tokens, only masked ones, chosen by the learner's seeded
    generator. micro_batch_tokens=32 packs the 6 trajectories (7 positions, 5 masked) as 4 + 2, so
    int(0.5 * 20) + int(0.5 * 10) = 15 of the 30 masked tokens are stopped."""
    metrics, chosen = _clip_cov_step(tiny_model, replay, monkeypatch, seed=0)
    assert metrics["step_applied"] == 1.0
    assert [(int(stopped.sum()), int(mask.sum())) for stopped, mask in chosen] == [(10, 20), (5, 10)]
    assert not any((stopped & ~mask).any() for stopped, mask in chosen)
    assert metrics["clip_cov_frac"] == pytest.approx(15 / 30)

    def tokens(selection):
        return [stopped.nonzero().tolist() for stopped, _ in selection]

    assert tokens(_clip_cov_step(tiny_model, replay, monkeypatch, seed=0)[1]) == tokens(chosen)
    assert tokens(_clip_cov_step(tiny_model, replay, monkeypatch, seed=1)[1]) != tokens(chosen)


def _described(entries) -> list[tuple]:
    return [(e.policy_version, e.advantage, e.trajectory.completion_ids.tolist(), e.trajectory.reward)
            for e in entries]


def test_a_checkpoint_keeps_the_self_imitation_buffer_and_the_random_streams(tiny_model, single_rank, replay,
                                                                             channel, tmp_path):
    saved = _learner(tiny_model, SIL, replay, channel, CLIP_COV)
    for step in range(2):  # fills the buffer, then replays from it: every random stream has moved
        saved.train_on(_samples(step))
    saved.save_checkpoint(str(tmp_path), "step2", {}, keep=1)
    resumed = _learner(tiny_model, SIL, replay, channel, CLIP_COV)
    resumed.load_checkpoint(str(tmp_path))

    assert resumed.imitation.baseline() == saved.imitation.baseline() == pytest.approx(2 / 3)
    assert len(saved.imitation) == 8
    assert _described(resumed.imitation.refresh(2)) == _described(saved.imitation.refresh(2))
    for generator in ("loss_generator", "imitation_generator"):
        assert torch.equal(getattr(resumed, generator).get_state(), getattr(saved, generator).get_state())
    expected = _described(saved.imitation.sample(3, saved.version, saved.rng))
    assert _described(resumed.imitation.sample(3, resumed.version, resumed.rng)) == expected


def test_a_non_finite_gradient_skips_the_step_and_stops_the_learner(tiny_model, single_rank, replay, channel,
                                                                    caplog):
    learner = _learner(tiny_model, PLAIN.model_copy(update={"max_bad_steps": 1}), replay, channel)
    next(learner.engine.engine.module.parameters()).register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(NonFiniteLossError, match="1 consecutive steps had a non-finite loss or gradient"):
        learner.train_on(_samples(0))
    assert "non-finite loss or gradient (1 in a row, limit 1)" in caplog.text
