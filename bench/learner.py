"""Learner update throughput: Tidal's update (DeepSpeed ZeRO-2, one rank) against a plain PyTorch
loop with the same loss, on the demo model and on a ~30M-parameter model.

Both sides train on the same batch (16 groups x 8 trajectories), packed into the same
micro-batches, with the same policy loss (`learner.losses.policy_loss`, PPO-clip, token-mean),
AdamW and gradient clipping; the plain loop is what a user would write by hand: forward, loss,
backward per micro-batch, then clip and step. Tidal also runs with BAPO, whose bounds need the
extra no-grad pass, to show what that pass costs. Rounds alternate (ours, plain, ours-BAPO) so
that load from other processes hits all alike; medians of tokens/s are reported, and the ratio is
the median of the per-round ratios. Writes bench/results/learner.json and prints a table.

    tidal bench learner            # both models (~3 minutes on 2 cores)
    tidal bench learner --quick    # the demo model, fewer rounds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench._common import median_ratio, model_path, write_report

RESULTS = Path(__file__).resolve().parent / "results" / "learner.json"
GROUPS, GROUP_SIZE, PROMPT_TOKENS, COMPLETION_TOKENS = 16, 8, 16, 40


def make_batch(vocab_size: int, seed: int):
    from buffer import Group, SampledGroup, Trajectory
    from learner.batch import build_batch

    rng = np.random.default_rng(seed)
    samples = []
    for g in range(GROUPS):
        trajectories = []
        for i in range(GROUP_SIZE):
            length = int(rng.integers(COMPLETION_TOKENS // 2, COMPLETION_TOKENS + 1))
            trajectories.append(Trajectory(
                prompt_ids=rng.integers(4, vocab_size, PROMPT_TOKENS), completion_ids=rng.integers(4, vocab_size, length),
                loss_mask=np.ones(length), behavior_logprobs=np.full(length, -np.log(vocab_size)) + 0.1 * rng.standard_normal(length),
                policy_versions=np.zeros(length), reward=float(i % 2)))
        samples.append(SampledGroup(Group(f"w:{g}", f"t{g}", "c", 0.0, trajectories), 1.0, 1.0, 1, 0))
    return build_batch(samples, [s.group.rewards - s.group.rewards.mean() for s in samples], pad_id=0)


class PlainLoop:
    """The hand-written baseline: HF model, torch AdamW, the same loss and micro-batches."""

    def __init__(self, path: str, cfg) -> None:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(cfg.seed)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                           weight_decay=cfg.optim.weight_decay)
        self.grad_clip = cfg.optim.grad_clip

    def update(self, batch, loss_cfg, micro_batch_tokens: int) -> None:
        from learner.engine import _next_token_logprobs
        from learner.losses import LossInputs, compute_normalizers, fixed_step_state, policy_loss

        micro_batches = batch.micro_batches(micro_batch_tokens)
        norm = compute_normalizers([mb.loss_mask for mb in micro_batches])
        state = fixed_step_state(loss_cfg)
        for mb in micro_batches:
            logits = self.model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False).logits
            logprobs, entropy = _next_token_logprobs(logits, mb.input_ids)
            inputs = LossInputs(logprobs=logprobs, behavior_logprobs=mb.behavior_logprobs, advantages=mb.advantages,
                                mask=mb.loss_mask, entropy=entropy)
            loss, _ = policy_loss(inputs, norm, state, loss_cfg)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def measure(name: str, root: Path, rounds: int) -> dict:
    from transformers import AutoTokenizer

    from learner.config import LearnerConfig
    from learner.engine import PolicyEngine
    from learner.loss_config import BAPOConfig, PolicyLossConfig
    from learner.step import train_step

    path, params = model_path(name, root)
    cfg = LearnerConfig(dtype="float32")
    vocab = len(AutoTokenizer.from_pretrained(path))
    batch = make_batch(vocab, seed=0)
    tokens = int(batch.attention_mask.sum())
    losses = {"ours": PolicyLossConfig(), "ours_bapo": PolicyLossConfig(objective=BAPOConfig())}
    engines = {key: PolicyEngine(path, cfg, total_steps=10**6, world_size=1) for key in losses}
    plain = PlainLoop(path, cfg)
    runs = {"ours": lambda: train_step(engines["ours"], batch, losses["ours"], cfg.micro_batch_tokens),
            "plain": lambda: plain.update(batch, losses["ours"], cfg.micro_batch_tokens),
            "ours_bapo": lambda: train_step(engines["ours_bapo"], batch, losses["ours_bapo"], cfg.micro_batch_tokens)}
    seconds: dict[str, list[float]] = {key: [] for key in runs}
    for round_index in range(rounds + 1):  # round 0 warms up (allocator, first DeepSpeed step)
        for key, run in runs.items():
            started = time.perf_counter()
            run()
            if round_index:
                seconds[key].append(time.perf_counter() - started)
    per_s = {key: [tokens / s for s in values] for key, values in seconds.items()}
    row = {"model": name, "params": params, "tokens_per_update": tokens,
           "micro_batches": len(batch.micro_batches(cfg.micro_batch_tokens))}
    for key in runs:
        row[f"{key}_tokens_per_s"] = statistics.median(per_s[key])
    for key in ("ours", "ours_bapo"):
        row[f"{key}_ratio"] = median_ratio(per_s[key], per_s["plain"])
    print(f"learner: {name} ({params / 1e6:.1f}M) ours {row['ours_tokens_per_s']:.0f} tok/s, plain "
          f"{row['plain_tokens_per_s']:.0f}, ratio {row['ours_ratio']:.2f} (BAPO {row['ours_bapo_ratio']:.2f})",
          file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> int:
    from buffer.ports import free_port
    from learner.engine import init_process_group

    parser = argparse.ArgumentParser(prog="tidal bench learner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the demo model only, 3 rounds")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, the same for every side")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    models = ["demo"] if args.quick else ["demo", "30M"]
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(args.threads)
    init_process_group(0, 1, "127.0.0.1", free_port())
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tidal-learner-") as root:
        results = [measure(name, Path(root), rounds) for name in models]
    settings = {"rounds": rounds, "threads": args.threads, "groups": GROUPS, "group_size": GROUP_SIZE,
                "prompt_tokens": PROMPT_TOKENS, "completion_tokens_max": COMPLETION_TOKENS}
    write_report(args.out, settings, started, results)
    print(f"{'model':>6} {'params':>7} {'ours tok/s':>11} {'plain tok/s':>12} {'ratio':>6} {'BAPO ratio':>11}")
    for row in results:
        print(f"{row['model']:>6} {row['params'] / 1e6:6.1f}M {row['ours_tokens_per_s']:11.0f} "
              f"{row['plain_tokens_per_s']:12.0f} {row['ours_ratio']:6.2f} {row['ours_bapo_ratio']:11.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
