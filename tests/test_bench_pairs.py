"""The async and trl benchmarks' pure helpers: time to target, per-pair speedups, medians."""

from __future__ import annotations

import runpy
import subprocess
from pathlib import Path

import pytest

from bench._common import median_ratio, outcome, time_to_target, wait_for_other_runs

ASYNC = runpy.run_path(str(Path(__file__).resolve().parent.parent / "bench" / "async.py"))

EVALS = [{"step": 0, "wall_s": 30.0, "eval_accuracy": 0.33}, {"step": 10, "wall_s": 36.0, "eval_accuracy": 0.71},
         {"step": 20, "wall_s": 42.0, "eval_accuracy": 0.65}, {"step": 30, "wall_s": 48.0, "eval_accuracy": 0.80}]


def test_time_to_target_counts_from_the_first_evaluation_to_the_first_one_at_target():
    assert time_to_target(EVALS, 0.70) == 6.0
    assert time_to_target(EVALS, 0.75) == 18.0
    assert time_to_target(EVALS, 0.90) is None


def test_outcome_keeps_first_and_last_accuracy_and_the_curve():
    assert outcome(EVALS, 0.75) == {"time_to_target_s": 18.0, "initial_accuracy": 0.33, "final_accuracy": 0.80,
                                    "evals": EVALS}


def test_the_wait_for_another_run_is_bounded_and_names_its_pid():
    other = subprocess.Popen(["bash", "-c", "exec -a 'tidal train (a test stand-in)' sleep 30"])
    try:
        with pytest.raises(RuntimeError, match=rf"another `tidal train` \(pid [0-9, ]*{other.pid}"):
            wait_for_other_runs("test", poll_s=0.05, max_wait_s=0.2)
    finally:
        other.kill()
        other.wait()


def _run(mode: str, seed: int, seconds: float | None, case: str = "demo") -> dict:
    return {"case": case, "mode": mode, "seed": seed, "time_to_target_s": seconds,
            "initial_accuracy": 0.3, "final_accuracy": 0.8 if seconds else 0.6}


def test_speedups_pair_runs_by_seed_and_name_a_missed_target():
    runs = [_run("sync", 0, 30.0), _run("async", 0, 15.0), _run("async", 1, 20.0), _run("sync", 1, 30.0),
            _run("sync", 2, None), _run("async", 2, 10.0)]
    assert ASYNC["speedups"](runs) == [2.0, 1.5, None]
    summary = ASYNC["summary"](runs, "demo")
    assert summary["median_speedup"] == 1.75  # of the pairs that both reached the target
    assert summary["sync_median_time_to_target_s"] == 30.0 and summary["async_median_time_to_target_s"] == 15.0
    assert abs(summary["sync_median_gain"] - 0.5) < 1e-9


def test_latency_case_slows_the_training_env_only():
    overrides = ASYNC["case_overrides"]("latency", 0.3)
    assert overrides["env"]["params"] == {"step_latency_s": 0.3}
    assert overrides["eval"]["envs"] == [{"name": "arithmetic"}]  # evaluation without the latency
    assert overrides["replay"] == {"max_times_sampled": 2}
    assert ASYNC["case_overrides"]("demo", 0.3) == {}

    from cluster.config import load_config

    # the slow env's calls go to the env-call threads: inline, every step would stall the engine
    assert load_config(None, overrides).env.inline_calls is False
    assert load_config(None, ASYNC["case_overrides"]("demo", 0.3)).env.inline_calls is True


def test_partial_case_is_the_demo_with_partial_rollouts():
    from cluster.config import load_config

    partial, demo = (load_config(None, ASYNC["case_overrides"](case, 0.3)) for case in ("partial", "demo"))
    assert partial.rollout.partial is True and demo.rollout.partial is False
    assert partial.model_dump(exclude={"rollout"}) == demo.model_dump(exclude={"rollout"})


TRL = runpy.run_path(str(Path(__file__).resolve().parent.parent / "bench" / "trl.py"))


def test_trl_summary_takes_medians_per_system_over_the_runs_that_reached_the_target():
    runs = [{"system": "tidal/vllm", "time_to_target_s": 20.0, "startup_s": 20.0, "final_accuracy": 0.8},
            {"system": "tidal/vllm", "time_to_target_s": None, "startup_s": 22.0, "final_accuracy": 0.6},
            {"system": "tidal/transformers", "time_to_target_s": None, "startup_s": 9.0, "final_accuracy": 0.5},
            {"system": "trl", "time_to_target_s": 10.0, "startup_s": 3.0, "final_accuracy": 0.75},
            {"system": "trl", "time_to_target_s": 14.0, "startup_s": 5.0, "final_accuracy": 0.77}]
    summary = TRL["summary"](runs, ["tidal/vllm", "tidal/transformers", "trl"])
    assert summary["tidal/vllm_median_time_to_target_s"] == 20.0 and summary["trl_median_time_to_target_s"] == 12.0
    assert summary["tidal/vllm_median_startup_s"] == 21.0 and summary["trl_median_final_accuracy"] == 0.76
    assert summary["tidal/transformers_median_time_to_target_s"] is None  # no run reached it
    assert summary["tidal/transformers_median_startup_s"] == 9.0


def test_median_ratio_takes_the_median_of_round_by_round_ratios():
    # rounds 2/1, 3/3, 8/2: ratios 2, 1, 4 -> median 2 (the ratio of medians would be 3/2)
    assert median_ratio([2.0, 3.0, 8.0], [1.0, 3.0, 2.0]) == 2.0
    with pytest.raises(ValueError, match="argument 2 is shorter"):
        median_ratio([1.0, 2.0], [1.0])  # every round has both sides
