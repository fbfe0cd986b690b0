"""Rollout throughput: the episode loop against raw vLLM `generate` on the same prompts, on the
demo model and on a ~30M-parameter model.

One vLLM engine serves the vLLM sides, so their engine settings cannot differ. Ours: the episode loop
(actors/episode_loop.py) runs 32 groups of 8 single-turn arithmetic episodes (env, renderer,
one request of n = 8 per group, rewards, trajectories) until every group is done, twice: with
the demo's env calls inline and with every env call on the env-call threads (what a tool env
gets). Raw: the same 32 prompts, tokenized by the same renderer, through `LLM.generate` with
n = 8 and the same sampling settings, the fastest a caller of vLLM gets. Rounds alternate (inline,
threads, raw). Then a second set of rounds runs the episode loop (env calls inline) on the
transformers engine (`rollout.engine.kind: transformers`), alternating with raw vLLM again, to
show which engine to pick at each model size. Tokens/s is generated tokens over wall time;
medians, and each ratio is the median of per-round ratios to raw vLLM of the same set.
Writes bench/results/rollout.json and prints a table.

    tidal bench rollout            # both models (~3 minutes on 2 cores)
    tidal bench rollout --quick    # the demo model, fewer rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench._common import median_ratio, model_path, write_report

RESULTS = Path(__file__).resolve().parent / "results" / "rollout.json"
GROUPS, GROUP_SIZE = 32, 8
ROUND_TIMEOUT_S = 300.0  # one round takes about a second on the demo model, 5 s on the 27M one


def episode_loop_s(engine, renderer, tasks, env_cfg, rollout) -> tuple[float, int]:
    """Seconds and generated tokens for every group through the episode loop (env calls inline
    as `env_cfg` says)."""
    from actors.episode_loop import EpisodeLoop
    from envs import EpisodeErrorCounter

    loop = EpisodeLoop(engine, renderer, rollout.limits, EpisodeErrorCounter())
    done = []
    started = time.perf_counter()
    for index, task in enumerate(tasks):
        loop.start(f"g{index}", task, [env_cfg.build_env() for _ in range(GROUP_SIZE)], rollout.sampling, done.append,
                   inline=env_cfg.inline_calls)
    deadline = started + ROUND_TIMEOUT_S
    while len(done) < len(tasks):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"episode loop: {len(done)} of {len(tasks)} groups done after {ROUND_TIMEOUT_S:.0f}s")
        loop.pump(wait_s=0.005)  # as the rollout worker pumps: wait for env answers, do not spin
    seconds = time.perf_counter() - started
    loop.close()
    tokens = sum(int(t.loss_mask.sum()) for run in done for e in run.episodes for t in e.trajectories())
    return seconds, tokens


def raw_generate_s(engine, prompts: list[list[int]], rollout) -> tuple[float, int]:
    """Seconds and generated tokens for the same prompts through vLLM's own batch call."""
    from vllm.inputs import TokensPrompt

    params = rollout.sampling.to_vllm(GROUP_SIZE, rollout.sampling.max_new_tokens)
    started = time.perf_counter()
    outputs = engine._llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return seconds, sum(len(c.token_ids) for out in outputs for c in out.outputs)


def alternate(sides: dict, rounds: int) -> dict[str, list[float]]:
    """Tokens/s of each side per round, the sides taking turns; round 0 warms up and is dropped."""
    rates: dict[str, list[float]] = {key: [] for key in sides}
    for round_index in range(rounds + 1):
        for key, run in sides.items():
            seconds, tokens = run()
            if round_index:
                rates[key].append(tokens / seconds)
    return rates


def measure(name: str, root: Path, rounds: int) -> dict:
    from transformers import AutoTokenizer

    from actors.config import RolloutConfig
    from actors.engine import VLLMEngine, make_engine
    from actors.engine_config import EngineConfig
    from actors.rendering import make_renderer
    from cluster.config import RunConfig

    path, params = model_path(name, root)
    env_cfg, rollout = RunConfig().env, RolloutConfig()  # the demo's env: calls inline
    threaded_env = env_cfg.model_copy(update={"inline_calls": False})
    source = env_cfg.build_task_source()
    tasks = [source.sample(np.random.default_rng(i), None) for i in range(GROUPS)]
    renderer = make_renderer(AutoTokenizer.from_pretrained(path))
    prompts = [renderer.first(env_cfg.build_env().reset(task)) for task in tasks]
    engine = VLLMEngine(path, rollout.engine, seed=0)
    sides = {"ours": lambda: episode_loop_s(engine, renderer, tasks, env_cfg, rollout),
             "ours_threads": lambda: episode_loop_s(engine, renderer, tasks, threaded_env, rollout),
             "raw": lambda: raw_generate_s(engine, prompts, rollout)}
    rates = alternate(sides, rounds)
    # The transformers engine joins only now, against raw vLLM once more: while it shared the
    # process with the vLLM rounds, the episode loop on vLLM measured about 0.05 lower against raw
    # (0.79-0.84 against 0.88 in two runs each of 15 rounds on the demo model, stop 22).
    hf_engine = make_engine(path, EngineConfig.model_validate({**rollout.engine.model_dump(), "kind": "transformers"}),
                            seed=0)
    against_hf = alternate({"ours_transformers": lambda: episode_loop_s(hf_engine, renderer, tasks, env_cfg, rollout),
                            "raw": sides["raw"]}, rounds)
    row = {"model": name, "params": params, "groups": GROUPS, "group_size": GROUP_SIZE,
           "max_new_tokens": rollout.sampling.max_new_tokens,
           **{f"{key}_tokens_per_s": statistics.median(values) for key, values in rates.items()},
           "ratio": median_ratio(rates["ours"], rates["raw"]),
           "ratio_threads": median_ratio(rates["ours_threads"], rates["raw"]),
           "ours_transformers_tokens_per_s": statistics.median(against_hf["ours_transformers"]),
           "ratio_transformers": median_ratio(against_hf["ours_transformers"], against_hf["raw"])}
    print(f"rollout: {name} ({params / 1e6:.1f}M) ours {row['ours_tokens_per_s']:.0f} tok/s (env threads "
          f"{row['ours_threads_tokens_per_s']:.0f}, transformers engine {row['ours_transformers_tokens_per_s']:.0f}), "
          f"raw vLLM {row['raw_tokens_per_s']:.0f}, ratio {row['ratio']:.2f} ({row['ratio_threads']:.2f}, "
          f"{row['ratio_transformers']:.2f})", file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal bench rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the demo model only, 2 rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    models = ["demo"] if args.quick else ["demo", "30M"]
    rounds = 2 if args.quick else args.rounds
    torch.set_num_threads(2)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tidal-rollout-") as root:
        results = [measure(name, Path(root), rounds) for name in models]
    write_report(args.out, {"rounds": rounds, "groups": GROUPS, "group_size": GROUP_SIZE}, started, results)
    print(f"{'model':>6} {'params':>7} {'ours tok/s':>11} {'env threads':>12} {'transformers':>13} "
          f"{'raw vLLM tok/s':>15} {'ratio':>6} {'threads':>8} {'transformers':>13}")
    for row in results:
        print(f"{row['model']:>6} {row['params'] / 1e6:6.1f}M {row['ours_tokens_per_s']:11.0f} "
              f"{row['ours_threads_tokens_per_s']:12.0f} {row['ours_transformers_tokens_per_s']:13.0f} "
              f"{row['raw_tokens_per_s']:15.0f} {row['ratio']:6.2f} {row['ratio_threads']:8.2f} "
              f"{row['ratio_transformers']:13.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
