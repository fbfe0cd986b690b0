"""The staleness benchmark's pure helpers: curve extraction, summary, and the per-method configs."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

STALENESS = runpy.run_path(str(Path(__file__).resolve().parent.parent / "bench" / "staleness.py"))

RECORDS = [  # as cluster.metrics.read_metrics returns them: evaluation at step 0, then learner steps
    {"step": 0, "wall_s": 1.0, "policy_version": 0, "eval_accuracy": 0.25, "eval_accuracy_greedy": 0.5},
    {"step": 1, "wall_s": 2.0, "reward_mean": 0.3, "entropy": 0.9, "staleness_mean": 0.0, "c_low": 0.6,
     "c_high": 1.2, "bapo_rho": 0.45},
    {"step": 2, "wall_s": 3.0, "reward_mean": 0.4, "entropy": 0.5, "staleness_mean": 2.0, "c_low": 0.6,
     "c_high": 1.25, "bapo_rho": 0.40, "eval_accuracy": 0.5, "eval_accuracy_greedy": 0.75},
    {"step": 3, "wall_s": 4.0, "reward_mean": 0.5, "entropy": 0.7, "staleness_mean": 4.0, "c_low": 0.62,
     "c_high": 3.0, "bapo_rho": 0.38},
    {"step": 4, "wall_s": 5.0, "reward_mean": 0.6, "entropy": 0.6, "staleness_mean": 6.0, "c_low": 0.6,
     "c_high": 1.2, "bapo_rho": 0.5, "eval_accuracy": 0.625, "eval_accuracy_greedy": 0.875},
]


def test_extract_curves_splits_training_steps_from_evaluations():
    curves = STALENESS["extract_curves"](RECORDS)
    assert curves["train"]["step"] == [1, 2, 3, 4]
    assert curves["train"]["entropy"] == [0.9, 0.5, 0.7, 0.6]
    assert curves["train"]["c_high"] == [1.2, 1.25, 3.0, 1.2]
    assert curves["eval"]["step"] == [0, 2, 4]
    assert curves["eval"]["eval_accuracy"] == [0.25, 0.5, 0.625]
    assert curves["eval"]["wall_s"] == [1.0, 3.0, 5.0]


def test_extract_curves_keeps_columns_aligned_when_a_key_is_missing():
    fixed_clip = [{k: v for k, v in r.items() if k != "bapo_rho"} for r in RECORDS]
    curves = STALENESS["extract_curves"](fixed_clip)
    assert curves["train"]["bapo_rho"] == [None, None, None, None]
    assert len(curves["train"]["bapo_rho"]) == len(curves["train"]["step"])


def test_summarize_by_hand():
    summary = STALENESS["summarize"](STALENESS["extract_curves"](RECORDS), (0.6, 1.2))
    assert summary["initial_eval_accuracy"] == 0.25
    assert summary["final_eval_accuracy"] == 0.625
    assert summary["final_eval_accuracy_greedy"] == 0.875
    assert summary["late_eval_accuracy_mean"] == 0.625  # the last third of 3 evaluations: the last one
    assert summary["min_entropy"] == 0.5  # step 2, not the last step
    assert summary["final_entropy"] == 0.6
    assert summary["staleness_mean"] == pytest.approx((0 + 2 + 4 + 6) / 4)
    assert summary["staleness_mean_second_half"] == pytest.approx((4 + 6) / 2)
    assert summary["steps"] == 4
    assert summary["wall_s"] == 5.0
    assert summary["bounds_moved_share"] == 0.5  # steps 2 and 3 left [0.6, 1.2]
    assert summary["c_high_max"] == 3.0


def test_spread_over_seeds_by_hand():
    runs = [{"summary": {key: value for key in STALENESS["SPREAD_KEYS"]}} for value in (0.2, 0.4, 0.9)]
    row = STALENESS["spread"](runs)["final_eval_accuracy"]
    assert row["mean"] == pytest.approx(0.5)
    assert row["std"] == pytest.approx(((0.3 ** 2 + 0.1 ** 2 + 0.4 ** 2) / 2) ** 0.5)
    assert (row["min"], row["max"]) == (0.2, 0.9)


def test_aggregate_groups_runs_by_level_and_method():
    def run(level, method, seed, accuracy):
        return {"level": level, "method": method, "seed": seed,
                "summary": {key: accuracy for key in STALENESS["SPREAD_KEYS"]}}

    runs = [run(4, "a", 0, 0.1), run(4, "a", 1, 0.3), run(8, "a", 0, 0.7), run(4, "b", 0, 0.5)]
    table = STALENESS["aggregate"](runs)
    assert table[4]["a"]["seeds"] == [0, 1]
    assert table[4]["a"]["final_eval_accuracy"]["mean"] == pytest.approx(0.2)
    assert table[8]["a"]["final_eval_accuracy"]["std"] == 0.0  # one seed: no spread
    assert table[4]["b"]["min_entropy"]["max"] == 0.5


def test_summarize_rejects_a_run_without_evaluations():
    without_eval = [{k: v for k, v in r.items() if not k.startswith("eval_")} for r in RECORDS]
    with pytest.raises(ValueError, match="0 evaluations"):
        STALENESS["summarize"](STALENESS["extract_curves"](without_eval), (0.6, 1.2))


def test_methods_differ_only_in_the_objective_and_validate():
    from cluster.config import load_config

    configs = {label: load_config(None, STALENESS["run_overrides"]("m", objective, 8, 7, 3, 5e-4, 5, Path("/tmp/x")))
               for label, objective in STALENESS["METHODS"].items()}
    bounds = {label: cfg.loss.objective.fixed_bounds() for label, cfg in configs.items()}
    assert bounds["fixed [0.8, 1.2]"] == pytest.approx((0.8, 1.2))
    assert bounds["clip-higher [0.8, 1.28]"] == pytest.approx((0.8, 1.28))
    assert configs["BAPO rho0 0.4"].loss.objective.rho0 == 0.4
    assert configs["BAPO rho0 0.6"].loss.objective.rho0 == 0.6
    assert configs["BAPO rho0 0.55"].loss.objective.rho0 == 0.55
    dumps = [cfg.model_dump(exclude={"loss"}) for cfg in configs.values()]
    assert all(d == dumps[0] for d in dumps)  # same seed, steps, lr, replay and rollout settings
    cfg = configs["BAPO rho0 0.6"]
    assert (cfg.steps, cfg.seed, cfg.learner.seed, cfg.learner.optim.lr) == (7, 3, 3, 5e-4)
    assert (cfg.replay.selector, cfg.replay.max_times_sampled, cfg.replay.max_staleness) == ("fifo", 2, 14)
    assert (cfg.rollout.max_staleness, cfg.rollout.partial) == (4, True)
    assert cfg.ray.include_dashboard is False


def test_quick_flag_shrinks_the_run():
    args = STALENESS["parse_args"](["--quick"])
    assert args.quick and args.steps < 20 and args.seeds == [0] and args.levels == [4]
    assert STALENESS["parse_args"]([]).seeds == [0, 1, 2]
    assert STALENESS["parse_args"](["--steps", "33"]).steps == 33


def test_resume_keeps_runs_made_with_the_same_settings_only(tmp_path):
    args = STALENESS["parse_args"](["--out", str(tmp_path), "--resume", "--seeds", "0"])
    assert STALENESS["earlier_runs"](args) == ([], 0.0)  # nothing there yet
    report = {"settings": STALENESS["settings"](args), "total_s": 12.5, "runs": [{"level": 4, "seed": 0}]}
    (tmp_path / "staleness.json").write_text(json.dumps(report))
    assert STALENESS["earlier_runs"](args) == ([{"level": 4, "seed": 0}], 12.5)
    other = STALENESS["parse_args"](["--out", str(tmp_path), "--resume", "--seeds", "0", "--steps", "99"])
    with pytest.raises(SystemExit, match="other settings"):
        STALENESS["earlier_runs"](other)
    fresh = STALENESS["parse_args"](["--out", str(tmp_path), "--seeds", "0"])
    assert STALENESS["earlier_runs"](fresh) == ([], 0.0)  # without --resume: start over
