"""What the stage benchmarks share: the models they compare on (the demo model and a random
~30M-parameter Llama) and how they write their results."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

THIRTY_M = {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "head_dim": 64, "intermediate_size": 1536}


def model_path(name: str, root: Path) -> tuple[str, int]:
    """The demo model, or a random ~30M-parameter Llama with the demo's tokenizer; and its size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cluster.demo_model import build_char_tokenizer, build_demo_model

    if name == "demo":
        path = str(build_demo_model())
    else:
        tokenizer = build_char_tokenizer(64)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=THIRTY_M["hidden_size"],
                             num_hidden_layers=THIRTY_M["num_layers"], num_attention_heads=THIRTY_M["num_heads"],
                             num_key_value_heads=THIRTY_M["num_heads"], head_dim=THIRTY_M["head_dim"],
                             intermediate_size=THIRTY_M["intermediate_size"], max_position_embeddings=64,
                             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        path = str(root / "m30")
        LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
    return path, params


def write_report(out: Path, settings: dict, started: float, results: list[dict]) -> None:
    """bench/results/<name>.json: the settings, the rows, the total time and the machine."""
    report = {"settings": settings, "total_s": time.time() - started, "machine": {"platform": platform.platform()},
              "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))  # default: Paths among the settings


def median_ratio(ours: list[float], baseline: list[float]) -> float:
    """The median of round-by-round ratios: each pair was measured back to back, so load that
    drifts between rounds cancels within a pair."""
    return statistics.median(o / b for o, b in zip(ours, baseline, strict=True))


def wait_for_other_runs(bench: str, poll_s: float = 10.0, max_wait_s: float = 3600.0) -> None:
    """The cores are shared: never overlap a run with another person's `tidal train`; give up
    after `max_wait_s`, naming the processes that held the machine."""
    deadline = time.monotonic() + max_wait_s
    while (other := subprocess.run(["pgrep", "-f", "tidal train"], capture_output=True, text=True)).returncode == 0:
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{bench}: another `tidal train` (pid {', '.join(other.stdout.split())}) has been "
                               f"running for over {max_wait_s:.0f}s; stop it or run the benchmark later")
        print(f"{bench}: another `tidal train` is running; waiting {poll_s:.0f}s", file=sys.stderr)
        time.sleep(poll_s)


def time_to_target(evals: list[dict], target: float) -> float | None:
    """Seconds from the first evaluation to the first one at or above `target`; None if none is."""
    start = evals[0]["wall_s"]
    return next((e["wall_s"] - start for e in evals if e["eval_accuracy"] >= target), None)


def outcome(evals: list[dict], target: float) -> dict:
    """What a run's evaluations say: time to `target`, first and last held-out accuracy, the curve."""
    return {"time_to_target_s": time_to_target(evals, target), "initial_accuracy": evals[0]["eval_accuracy"],
            "final_accuracy": evals[-1]["eval_accuracy"], "evals": evals}


def train_evaluations(bench: str, overrides: dict, label: str) -> tuple[list[dict], float]:
    """One `tidal train` with `overrides` of the demo, after any other run: its evaluations
    (step, wall_s, eval_accuracy) and the run's whole seconds."""
    from cluster.config import load_config
    from cluster.driver import train
    from cluster.metrics import read_metrics

    cfg = load_config(None, overrides | {"ray": {"include_dashboard": False}})  # 8265 may be another run's
    wait_for_other_runs(bench)
    print(f"{bench}: {label}: {cfg.steps} steps", file=sys.stderr)
    started = time.time()
    records = read_metrics(train(cfg) / "metrics.jsonl")
    # An evaluation runs beside training: its record is the step it ended at, `version` what it measured.
    evals = [{"step": r["step"], "version": r["eval_policy_version"], "wall_s": r["wall_s"],
              "eval_accuracy": r["eval_accuracy"]} for r in records if "eval_accuracy" in r]
    return evals, time.time() - started
