"""A learner rank: a Ray actor that samples from the replay, trains one step and publishes weights.

The driver calls `train_step()` on every rank once per update; each rank samples its share of
the global batch independently (like data-parallel loaders), the ranks meet in the gradient
reduction, and rank 0 publishes the new weights to the weight channel.

Resuming a run: build the learners as for a new run, call `load_checkpoint(CHECKPOINT_DIR)` on
every rank (it returns the checkpoint's client state: the policy version and what the driver
saved with it), then `publish(rewind=True)` on every rank so that the rollout workers start from
the restored weights, and the replay drops what the lost timeline made.

The actor serves two calls at once so that the driver can ask `activity()` while a step runs;
everything that touches the engine holds one lock.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import ray
import torch
import torch.distributed as dist

from buffer import Group, ReplayClient, ReplayConfig, SampledGroup, Trajectory
from buffer.codec import decode_trajectories, encode_trajectories
from buffer.ports import free_port
from buffer.weight_transport import WeightSyncConfig
from envs.curriculum import mean_abs_advantage_by_category
from learner.advantages import make_estimator
from learner.batch import TrainBatch, build_batch
from learner.config import LearnerConfig
from learner.engine import PolicyEngine, init_process_group
from learner.loss_config import PolicyLossConfig
from learner.self_imitation import SelfImitationBuffer, imitation_weight
from learner.step import SelfImitationReplay, train_step
from learner.weight_broadcast import WeightBroadcaster

log = logging.getLogger(__name__)


PUBLISH_TIMEOUT_S = 60.0  # the weight channel is a tiny actor: a minute is far above normal


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN or infinite loss or gradient."""


class Learner:
    """Built in two steps: the constructor takes the settings, `setup(master_addr, master_port)` joins
    the process group (rank 0's address is only known once rank 0 is placed) and builds the engine."""

    def __init__(self, rank: int, world_size: int, model_path: str, cfg: LearnerConfig, loss_cfg: PolicyLossConfig,
                 replay_cfg: ReplayConfig, shard_urls: list[str], channel, total_steps: int,
                 weights: WeightSyncConfig = WeightSyncConfig(), priority_decay: float = 0.5) -> None:
        torch.set_num_threads(1)
        self.rank, self.world_size = rank, world_size
        self.cfg, self.loss_cfg = cfg, loss_cfg
        self.model_path = model_path
        self.total_steps = total_steps
        self.replay = ReplayClient(replay_cfg, shard_urls)
        self.channel = channel
        self.weight_sync = weights
        self.broadcaster: WeightBroadcaster | None = None
        self.priority_decay = priority_decay
        self.version = 0
        self.advantages = make_estimator(cfg.advantage, cfg.advantage_params)
        self._lock = threading.Lock()
        self._activity = "starting"
        self.bad_steps = 0
        si_cfg = cfg.self_imitation
        self.imitation: SelfImitationBuffer[Trajectory] | None = SelfImitationBuffer(si_cfg) if si_cfg else None
        self.rng = np.random.default_rng([cfg.seed, rank])  # self-imitation's sampling, and the generators' seeds
        self.imitation_generator = self._seeded_generator()  # Clip-Cov on the replayed tokens
        self.loss_generator = self._seeded_generator()  # Clip-Cov on the batch's tokens

    def _seeded_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.rng.integers(2**62)))

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's address and a port free on it: where the process group meets (ask rank 0)."""
        return ray.util.get_node_ip_address(), free_port("")

    def setup(self, master_addr: str, master_port: int) -> None:
        from transformers import AutoTokenizer

        init_process_group(self.rank, self.world_size, master_addr, master_port)
        self.engine = PolicyEngine(self.model_path, self.cfg, self.total_steps, self.world_size,
                                   with_reference=self.loss_cfg.needs_reference)
        self.pad_id = AutoTokenizer.from_pretrained(self.model_path).pad_token_id
        if self.rank == 0 and self.weight_sync.backend == "collective":
            self.broadcaster = WeightBroadcaster(self.channel, self.engine.named_weights(), self.weight_sync.bucket_bytes,
                                                 self.weight_sync.timeout_s, "nccl" if torch.cuda.is_available() else "gloo")
        self._activity = "idle"

    def groups_for_this_rank(self) -> int:
        share, extra = divmod(self.cfg.groups_per_step, self.world_size)
        return share + (self.rank < extra)

    def activity(self) -> str:
        """What this rank is doing now (for the driver's watchdog)."""
        return self._activity

    def train_step(self) -> dict:
        """Sample this rank's share of the batch, train one update on it (collective over the ranks)."""
        with self._lock:
            started = time.time()
            self._activity = f"sampling {self.groups_for_this_rank()} groups from the replay at version {self.version}"
            samples = self.replay.sample(self.groups_for_this_rank(), learner_version=self.version,
                                         timeout=self.cfg.sample_timeout_s)
            sampled = time.time()
            self._activity = f"training on {len(samples)} groups at version {self.version}"
            metrics = self.train_on(samples)
            self._activity = "idle"
            return metrics | {"time/sample_s": sampled - started}

    def train_on(self, samples: list[SampledGroup]) -> dict:
        """One update on the given groups; a skipped step (non-finite loss or gradient) leaves the weights
        as they were."""
        started = time.time()
        advantages = [self.advantages(s.group, first_use=s.times_sampled == 1) for s in samples]
        # Prioritized sampling is corrected by the importance weight, applied to the advantage.
        batch = build_batch(samples, [a * s.weight for a, s in zip(advantages, samples)], self.pad_id)
        batch_metrics = self._batch_metrics(samples, batch, advantages)
        replay = self._self_imitation_replay()
        metrics, applied = train_step(self.engine, batch, self.loss_cfg, self.cfg.micro_batch_tokens,
                                      generator=self.loss_generator, replay=replay)
        trained = time.time()
        if applied:
            self._remember_good_trajectories(samples)
            self._after_update(samples)
        else:
            self._after_skip()
        elapsed = trained - started
        return {**metrics, **batch_metrics, **self._self_imitation_metrics(replay),
                "step_applied": float(applied), "policy_version": self.version, "lr": self.engine.lr,
                "time/train_s": elapsed, "time/publish_s": time.time() - trained,
                "learner_tokens_per_s": int(batch.attention_mask.sum()) / max(elapsed, 1e-9)}

    def _self_imitation_replay(self) -> SelfImitationReplay | None:
        """This step's replayed trajectories, advantages recalibrated (None when self-imitation is off)."""
        if self.imitation is None:
            return None
        entries = self.imitation.sample(self.cfg.self_imitation_samples, self.version, self.rng)
        batch = None
        if entries:
            replayed = Group("self-imitation:replay", "", "", time.time(), [e.trajectory for e in entries])
            advantages = np.array([e.advantage for e in entries])
            batch = build_batch([SampledGroup(replayed, 1.0, 1.0, 0, 0)], [advantages], self.pad_id)
        return SelfImitationReplay(batch, self.cfg.self_imitation, self.version, self.imitation_generator)

    def _remember_good_trajectories(self, samples: list[SampledGroup]) -> None:
        """SPEAR: A = R - median of recent group-mean rewards (this batch's included); A > 0 are kept."""
        if self.imitation is None:
            return
        self.imitation.observe_groups(s.group.rewards for s in samples)
        baseline = self.imitation.baseline()
        for s in samples:
            self.imitation.add(s.group.trajectories, s.group.rewards - baseline, s.group.max_policy_version)

    def _self_imitation_metrics(self, replay: SelfImitationReplay | None) -> dict:
        if replay is None:
            return {}
        return {"sil/weight": imitation_weight(replay.step, replay.cfg), "sil/buffer_size": len(self.imitation)}

    def _after_update(self, samples: list[SampledGroup]) -> None:
        self.bad_steps = 0
        trained_with = self.version
        self.version += 1
        self.publish()
        self.replay.report_trained(trained_with, [(s.group.group_id, s.group.priority * self.priority_decay)
                                                  for s in samples])

    def _after_skip(self) -> None:
        self.bad_steps += 1
        log.warning("step skipped at policy version %d: non-finite loss or gradient (%d in a row, limit %d)",
                    self.version, self.bad_steps, self.cfg.max_bad_steps)
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise NonFiniteLossError(f"{self.bad_steps} consecutive steps had a non-finite loss or gradient "
                                     f"(max_bad_steps={self.cfg.max_bad_steps}); stopping")

    def _batch_metrics(self, samples: list[SampledGroup], batch: TrainBatch, advantages: list[np.ndarray]) -> dict:
        """Batch statistics, and per task category the mean |A| of its groups (`signal/<category>`, with
        their count `signal_groups/<category>`): what the run's curriculum learns from."""
        mask = batch.loss_mask.bool()
        behaviour_versions = batch.policy_versions[mask].double()
        rewards = np.concatenate([s.group.rewards for s in samples])
        producers = {s.group.group_id.rsplit(":", 1)[0] for s in samples}  # group ids are "worker:sequence"
        categories = [s.group.category for s in samples]
        signals = mean_abs_advantage_by_category(zip(categories, advantages))
        return {"reward_mean": float(rewards.mean()), "groups": len(samples), "producers": len(producers),
                "staleness_mean": float(self.version - behaviour_versions.mean()) if mask.any() else 0.0,
                "importance_weight_mean": float(np.mean([s.weight for s in samples]))} | {
            f"signal/{category}": value for category, value in signals.items()} | {
            f"signal_groups/{category}": float(categories.count(category)) for category in signals}

    def publish(self, rewind: bool = False) -> None:
        """Rank 0 tells the replay its version, then publishes the weights, so that no group made with
        them can reach the replay ahead of the version (rewind: after a restore from a checkpoint; the
        replay drops what the lost timeline made). Object store: the weights go in it and the channel
        names them; collective: the channel announces the version and the broadcaster sends it."""
        if self.rank != 0:
            return
        self.replay.set_learner_version(self.version, rewind)
        weights = self.engine.named_weights()
        # NumPy arrays: the object store holds their bytes as they are, and a worker reads them in
        # place (torch tensors would be pickled, and copied again on every worker's fetch).
        refs = [] if self.broadcaster is not None else [ray.put({name: t.numpy() for name, t in weights.items()})]
        head = ray.get(self.channel.publish.remote(self.version, refs, rewind), timeout=PUBLISH_TIMEOUT_S)
        if self.broadcaster is not None:
            self.broadcaster.publish(head, weights)

    def recompute_logprobs(self, trajectories_ids: list[list[int]]) -> list[list[float]]:
        """Next-token logprobs of each sequence under the current weights (for checking engine parity)."""
        with torch.no_grad():
            out = []
            for ids in trajectories_ids:
                input_ids = torch.tensor([ids])
                logprobs, _ = self.engine.token_logprobs(input_ids, torch.ones_like(input_ids))
                out.append(logprobs[0].tolist())
            return out

    def next_token_probabilities(self, contexts: list[list[int]], candidates: list[list[int]]) -> list[list[float]]:
        """For each context, the current policy's probability of each candidate next token (exact,
        from this rank's weights: the game evaluators score strategies with it)."""
        with self._lock, torch.no_grad():
            out = []
            for ids, tokens in zip(contexts, candidates, strict=True):
                input_ids = torch.tensor([ids], device=self.engine.device)
                logits = self.engine.engine(input_ids=input_ids, use_cache=False).logits[0, -1].float()
                out.append(torch.softmax(logits, -1)[tokens].tolist())
            return out

    def save_checkpoint(self, directory: str, tag: str, driver_state: dict, keep: int) -> None:
        """DeepSpeed state plus the policy version, `driver_state` and each rank's own state, as
        `directory/tag`; collective: call it on every rank. Rank 0 then deletes all but the newest
        `keep` checkpoints."""
        with self._lock:
            self._activity = f"saving checkpoint {tag}"
            self.engine.save_checkpoint(Path(directory), tag, {"policy_version": self.version, "driver": driver_state,
                                                               "ranks": self._gather_rank_states()})
            if self.rank == 0:
                tags = sorted((p for p in Path(directory).iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
                for old in tags[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
            self._activity = "idle"

    def load_checkpoint(self, directory: str) -> dict:
        """Restore the latest checkpoint under `directory` (every rank); returns its client state
        (policy_version, driver)."""
        with self._lock:
            state = self.engine.load_checkpoint(Path(directory))
            self.version = int(state["policy_version"])
            ranks = state.pop("ranks", None) or []
            if self.rank < len(ranks):
                self._load_rank_state(ranks[self.rank])
            else:  # a checkpoint from before per-rank state (rank 0's baselines), or a rank the run did not have
                self.advantages.load_state(state.get("advantage", {}))
            self.bad_steps = 0
            return state

    def _gather_rank_states(self) -> list[dict] | None:
        """Every rank's `_rank_state()` on rank 0 (None elsewhere): DeepSpeed saves rank 0's client state only."""
        states = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(self._rank_state(), states, dst=0)
        return states

    def _rank_state(self) -> dict:
        """What this rank alone holds: its advantage baselines (RAE's are per rank), its random streams
        and its self-imitation buffer (plain data)."""
        state = {"advantage": self.advantages.state(), "rng": self.rng.bit_generator.state,
                 "loss_generator": self.loss_generator.get_state(),
                 "imitation_generator": self.imitation_generator.get_state()}
        if self.imitation is not None:
            state["self_imitation"] = self.imitation.state(partial(encode_trajectories, {}))
        return state

    def _load_rank_state(self, state: dict) -> None:
        self.advantages.load_state(state["advantage"])
        self.rng.bit_generator.state = state["rng"]
        self.loss_generator.set_state(state["loss_generator"])
        self.imitation_generator.set_state(state["imitation_generator"])
        if self.imitation is not None and "self_imitation" in state:  # the run may have turned it on since
            self.imitation.load_state(state["self_imitation"], lambda payload: decode_trajectories(payload)[1])

    def export_hf(self, directory: str) -> None:
        if self.rank == 0:
            self.engine.export_hf(Path(directory), self.model_path)


RemoteLearner = ray.remote(max_concurrency=2)(Learner)
