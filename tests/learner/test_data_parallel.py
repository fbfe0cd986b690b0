"""Data parallelism: 2 learner ranks (2 Ray actors, gloo, DeepSpeed) produce the same reduced
gradient, metrics and updated weights as 1 rank on the same global batch.

The ranks get different numbers of micro-batches, so this also covers the padding backwards that
keep ZeRO-2's per-backward reductions matched. A missing or wrong world-size factor, or a loss
normalised by local instead of global counts, would change the gradient by a factor of ~2. Both
update paths are covered (BAPO's no-grad pass first; PPO-clip's finite check per micro-batch), and
a NaN that only one rank sees, after it already backpropagated a micro-batch, skips the step on both.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from buffer import Group, SampledGroup, Trajectory
from learner.batch import build_batch
from learner.config import LearnerConfig
from learner.engine import PolicyEngine
from learner.loss_config import BAPOConfig, CorrectionConfig, PolicyLossConfig
from learner.step import train_step

from conftest import free_port

pytestmark = pytest.mark.integration

LOSSES = {"bapo": PolicyLossConfig(objective=BAPOConfig(), correction=CorrectionConfig(mode="tis"), entropy_coef=0.01),
          "ppo_clip": PolicyLossConfig(correction=CorrectionConfig(mode="tis"), entropy_coef=0.01)}
MICRO_BATCH_TOKENS = 24
STAGE = 2  # stage 0's reduction is plain all-reduce; ZeRO-2 reduce-scatters per backward


def global_batch(poisoned: bool = False) -> list[SampledGroup]:
    """Two groups: group 0 has long rows (2 micro-batches of 24 tokens), group 1 short ones (1).
    poisoned: group 0's shortest row (in its second micro-batch) has NaN behaviour logprobs."""
    rng = np.random.default_rng(7)
    groups = []
    for g, (prompt_len, completion_lens) in enumerate([(4, [8, 7, 9]), (3, [2, 4, 3])]):
        trajectories = []
        for i, c in enumerate(completion_lens):
            mask = np.ones(c)
            mask[c // 2] = 0  # one environment token per row
            trajectories.append(Trajectory(
                prompt_ids=rng.integers(4, 18, prompt_len), completion_ids=rng.integers(4, 18, c), loss_mask=mask,
                # near the random model's ~log(1/18), so ratios spread around 1 and some tokens clip
                behavior_logprobs=np.where(mask > 0, -2.9 + 0.4 * rng.standard_normal(c), 0.0) + (
                    np.nan if poisoned and (g, c) == (0, 7) else 0.0),
                policy_versions=np.where(mask > 0, 0, -1), reward=float(rng.integers(0, 2) + i % 2)))
        groups.append(SampledGroup(Group(f"w:{g}", f"t{g}", "c", 0.0, trajectories), 1.0, 1.0, 1, 0))
    return groups


def one_step(model_path: str, world_size: int, loss: str, group_indices: list[int], poisoned: bool = False) -> dict:
    """One update of a fresh engine on the given groups; the reduced gradient is read just before the update."""
    from deepspeed.utils import safe_get_full_grad

    samples = [global_batch(poisoned)[i] for i in group_indices]
    advantages = [s.group.rewards - s.group.rewards.mean() for s in samples]
    batch = build_batch(samples, advantages, pad_id=0)
    engine = PolicyEngine(model_path, LearnerConfig(zero_stage=STAGE, dtype="float32"), 10, world_size)
    initial = engine.named_weights()
    optimizer, captured = engine.engine.optimizer, {}
    original_step = optimizer.step

    def capturing_step(*args, **kwargs):  # runs inside engine.step(), after the reduction, before clipping
        params = engine.engine.module.parameters()
        captured["grad"] = torch.cat([safe_get_full_grad(p).detach().reshape(-1).clone() for p in params])
        return original_step(*args, **kwargs)

    optimizer.step = capturing_step
    metrics, applied = train_step(engine, batch, LOSSES[loss], MICRO_BATCH_TOKENS)
    return {"metrics": metrics, "applied": applied, "grad": captured.get("grad"), "weights": engine.named_weights(),
            "initial": initial}


@ray.remote(num_cpus=1)
class Rank:
    def __init__(self, rank: int, world_size: int, port: int) -> None:
        os.environ["DS_ACCELERATOR"] = "cpu"
        torch.set_num_threads(1)
        from learner.engine import init_process_group

        init_process_group(rank, world_size, "127.0.0.1", port)
        self.world_size = world_size

    def one_step(self, model_path: str, loss: str, group_indices: list[int], poisoned: bool = False) -> dict:
        return one_step(model_path, self.world_size, loss, group_indices, poisoned)

    def gathered_rank_states(self, rank: int) -> list[dict] | None:
        """What a checkpoint keeps of each rank's own state (its random streams), as rank 0 gathers it."""
        from learner.advantages import make_estimator
        from learner.learner_actor import Learner

        learner = Learner.__new__(Learner)  # only the per-rank state: no engine, replay or channel
        learner.rank, learner.world_size, learner.imitation = rank, self.world_size, None
        learner.advantages = make_estimator("rae", {})
        learner.advantages.load_state({"baselines": {f"rank{rank}": float(rank)}})
        learner.rng = np.random.default_rng([0, rank])
        learner.loss_generator, learner.imitation_generator = learner._seeded_generator(), learner._seeded_generator()
        return learner._gather_rank_states()


@pytest.fixture(scope="module")
def two_ranks(tiny_model):
    here = Path(__file__).resolve().parent
    path = os.pathsep.join([str(here.parent.parent), str(here), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=4, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}})
    try:
        port = free_port()
        ranks = [Rank.remote(r, 2, port) for r in range(2)]
        results = {loss: ray.get([rank.one_step.remote(tiny_model, loss, [r]) for r, rank in enumerate(ranks)])
                   for loss in LOSSES}
        results["poisoned"] = ray.get([rank.one_step.remote(tiny_model, "ppo_clip", [r], True)
                                       for r, rank in enumerate(ranks)], timeout=120)
        results["gathered"] = ray.get([rank.gathered_rank_states.remote(r) for r, rank in enumerate(ranks)],
                                      timeout=60)
        yield results
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def one_rank(tiny_model, single_rank):
    return {loss: one_step(tiny_model, 1, loss, [0, 1]) for loss in LOSSES}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("loss", LOSSES)
def test_two_ranks_reduce_to_the_one_rank_gradient(two_ranks, one_rank, loss):
    reference = one_rank[loss]
    assert reference["applied"] and all(r["applied"] for r in two_ranks[loss])
    assert [r["metrics"]["micro_batches"] for r in two_ranks[loss]] == [2, 1]  # padding backward on rank 1
    for rank in two_ranks[loss]:
        assert _relative(rank["grad"], reference["grad"]) < 1e-5
        assert float(reference["grad"].norm()) > 1e-3  # a real gradient, not zeros on both sides
        assert rank["metrics"]["grad_norm"] == pytest.approx(reference["metrics"]["grad_norm"], rel=1e-5)
        assert rank["metrics"]["grad_norm"] == pytest.approx(float(reference["grad"].norm()), rel=1e-5)


@pytest.mark.parametrize("loss", LOSSES)
def test_two_ranks_agree_with_one_rank_on_metrics_and_updated_weights(two_ranks, one_rank, loss):
    reference = one_rank[loss]
    keys = ["loss", "entropy", "c_low", "c_high", "clip_frac_low", "clip_frac_high", "pos_grad_share",
            "neg_grad_share", "tis_weight_mean", "tis_frac_capped", "logprob_mismatch"]
    keys += ["bapo_rho"] if loss == "bapo" else []
    for rank in two_ranks[loss]:
        for key in keys:
            assert rank["metrics"][key] == pytest.approx(reference["metrics"][key], rel=1e-5, abs=1e-7), key
        for name, weight in reference["weights"].items():
            torch.testing.assert_close(rank["weights"][name], weight, rtol=0, atol=1e-7, msg=name)


def test_a_nan_seen_by_one_rank_after_a_backward_skips_the_step_on_both(two_ranks):
    """Rank 0 backpropagates its first micro-batch, then meets the NaN in its second; rank 1 has one
    clean micro-batch (its second slot is padding). Both must skip, and neither may hang."""
    rank0, rank1 = two_ranks["poisoned"]
    assert [rank0["metrics"]["micro_batches"], rank1["metrics"]["micro_batches"]] == [2, 1]
    for rank in (rank0, rank1):
        assert not rank["applied"] and rank["grad"] is None  # the optimizer step never ran
        for name, weight in rank["initial"].items():
            assert torch.equal(rank["weights"][name], weight), name


def test_a_checkpoint_gathers_every_ranks_own_state_on_rank_0(two_ranks):
    """DeepSpeed saves rank 0's client state only: each rank's random streams reach it by a gather."""
    on_rank0, on_rank1 = two_ranks["gathered"]
    assert on_rank1 is None and len(on_rank0) == 2
    assert [state["advantage"] for state in on_rank0] == [{"baselines": {"rank0": 0.0}}, {"baselines": {"rank1": 1.0}}]
    streams = [state["rng"]["state"]["state"] for state in on_rank0]
    assert streams[0] != streams[1]  # each rank's own, not rank 0's twice
    expected = [np.random.default_rng([0, rank]) for rank in range(2)]
    for generator in expected:  # as each rank's rng stands after seeding its two generators
        generator.integers(2**62, size=2)
    assert streams == [generator.bit_generator.state["state"]["state"] for generator in expected]
