"""Run configs: a bad key, type or path fails at load with the dotted key (or the path) in the message,
and `tidal train` turns that into exit code 2 before any service starts. The shipped configs validate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import ray
import yaml

from cluster.cli import main
from cluster.config import RunConfig, load_config
from cluster.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"rollout\.num_workerz") as caught:
        load_config(_write(tmp_path, "rollout:\n  num_workerz: 3\n"))
    assert "Extra inputs are not permitted" in str(caught.value)


def test_a_misspelt_task_source_setting_is_named_under_task_params(tmp_path):
    """The math dataset's settings are a model of its own: its error must not read as a key of env."""
    data = Path(__file__).parents[1] / "data" / "math_sample.jsonl"
    text = (f"env:\n  name: single_turn\n  params: {{rewards: {{math_answer: 1.0}}}}\n  task_source: math_dataset\n"
            f"  task_params: {{path: {data}, question_colum: problem}}\n")
    with pytest.raises(ConfigError, match=r"env: .*task_params\.question_colum: Extra inputs are not permitted"):
        load_config(_write(tmp_path, text))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"learner\.groups_per_step") as caught:
        load_config(_write(tmp_path, "learner:\n  groups_per_step: many\n"))
    assert "integer" in str(caught.value)


def test_missing_model_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match=r"model\.path") as caught:
        load_config(_write(tmp_path, f"model:\n  path: {missing}\n"))
    assert str(missing) in str(caught.value)


def test_every_error_of_a_file_is_reported_at_once(tmp_path):
    text = "steps: 0\nrollout:\n  num_workerz: 3\n"
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    assert "steps" in str(caught.value) and "rollout.num_workerz" in str(caught.value)


def test_train_with_bad_config_exits_2_before_ray(tmp_path, capsys):
    assert not ray.is_initialized()
    code = main(["train", str(_write(tmp_path, "rollout:\n  num_workerz: 3\n"))])
    assert code == 2
    assert "rollout.num_workerz" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_demo_config_is_the_defaults_written_out():
    assert load_config(CONFIGS / "demo.yaml") == RunConfig()
    on_disk = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    defaults = RunConfig().model_dump(mode="json")
    del defaults["replay"]["password"]  # left out on purpose: a null here would override TIDAL_REDIS_PASSWORD
    assert on_disk == defaults  # every other default is written out, none missing


def test_a_replay_section_keeps_the_runs_replay_defaults_unless_it_sets_them():
    assert (RunConfig().replay.selector, RunConfig().replay.max_times_sampled) == ("lifo", 1)
    partial = load_config(None, {"replay": {"max_staleness": 2}}).replay
    assert (partial.selector, partial.max_times_sampled, partial.max_staleness) == ("lifo", 1, 2)
    own = load_config(None, {"replay": {"selector": "uniform", "max_times_sampled": 0}}).replay
    assert (own.selector, own.max_times_sampled, own.alpha) == ("uniform", 0, 0.6)


def test_example_cluster_config_validates_except_the_model_path():
    path = CONFIGS / "example-cluster.yaml"
    with pytest.raises(ConfigError, match=r"model\.path"):
        load_config(path)  # the placeholder does not exist on this machine
    cfg = load_config(path, overrides={"model": {"path": None}})
    assert cfg.ray.address == "auto" and len(cfg.replay.shard_urls) >= 2
    assert "password" not in yaml.safe_load(path.read_text())["replay"]  # it comes from TIDAL_REDIS_PASSWORD


def test_metrics_rewind_keeps_every_step_once(tmp_path):
    from cluster.metrics import MetricsWriter, read_metrics

    writer = MetricsWriter(tmp_path)
    for step in range(6):
        writer.write({"step": step, "loss": float(step)})
    writer.rewind(3)  # a restore to step 3: steps 4 and 5 are redone
    writer.write({"step": 3, "eval_accuracy": 0.5})  # the resumed run's first evaluation, at the restored step
    writer.write({"step": 4, "loss": 40.0})
    writer.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert records[3] == {"step": 3, "loss": 3.0, "eval_accuracy": 0.5} and records[4]["loss"] == 40.0
    assert len(MetricsWriter(tmp_path).records) == 5


@pytest.mark.parametrize("url", ["redis://:hunter2@10.0.0.5:6379", "redis://default:hunter2@10.0.0.5:6379/0",
                                 "redis://10.0.0.5:6379?password=hunter2"])
def test_a_password_in_a_shard_url_is_refused_at_load_without_echoing_it(url):
    """URLs are printed and written to the run directory (config.yaml, replay/shards.json)."""
    from cluster.config import parse_overrides

    refusal = ("replay.shard_urls: Value error, shard_urls[1] (10.0.0.5:6379) holds a password: take it out and "
               "set replay.password or TIDAL_REDIS_PASSWORD instead")
    with pytest.raises(ConfigError, match=re.escape(refusal)) as caught:
        load_config(None, parse_overrides([f"replay.shard_urls=[redis://10.0.0.4:6379, '{url}']"]))
    assert "hunter2" not in str(caught.value)


def test_set_overrides_are_typed_and_validated_like_the_file(tmp_path, capsys):
    from cluster.config import parse_overrides

    overrides = parse_overrides(["rollout.num_workers=4", "learner.optim.lr=1e-6", "eval.every=0",
                                 "replay.shard_urls=[redis://a:1, redis://b:2]"])
    assert overrides == {"rollout": {"num_workers": 4}, "learner": {"optim": {"lr": 1e-6}}, "eval": {"every": 0},
                         "replay": {"shard_urls": ["redis://a:1", "redis://b:2"]}}
    cfg = load_config(_write(tmp_path, "rollout:\n  num_workers: 3\n  group_size: 4\n"), parse_overrides(
        ["rollout.num_workers=5"]))
    assert (cfg.rollout.num_workers, cfg.rollout.group_size) == (5, 4)  # the file's other keys stay
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        parse_overrides(["rollout.num_workers"])
    assert main(["train", "--set", "rollout.num_workerz=4"]) == 2  # a bad key fails before anything starts
    assert "rollout.num_workerz" in capsys.readouterr().err
    assert main(["train", "--set", "learner.optim.lr=fast"]) == 2
    assert "learner.optim.lr" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, named", [
    (["learner.advantage=rae", "learner.advantage_params.alphaa=0.9"],
     "learner: Value error, advantage estimator 'rae' has no parameter 'alphaa'; its parameters: alpha"),
    (["learner.optim.betas=[1.5, 0.999]"], "learner.optim.betas: Value error, each of betas must be in [0, 1)"),
    (["learner.optim.betas=[.nan, 0.9]"], "learner.optim.betas: Value error, each of betas must be in [0, 1)"),
    (["learner.num_ranks=3", "learner.groups_per_step=2"], "groups_per_step (2) < num_ranks (3)"),
    (["loss.objective.eps_high=0.3"], "loss.objective: set loss.objective.name too"),
    (["loss.objective.name=bapo", "loss.correction.mode=decoupled"],
     "loss: Value error, BAPO adapts its clipping bounds to the ratio the objective clips"),
    (["env.name=single_turn", "env.params.reward=math_answer"],
     "env: Value error, env 'single_turn' has no parameter 'reward'; its parameters: rewards, reward_params, "
     "success_term"),
])
def test_settings_that_would_fail_inside_the_learner_fail_at_load_naming_the_key(overrides, named):
    """Each of these was accepted, then failed once Ray and Redis were up (or as a bare traceback)."""
    from cluster.config import parse_overrides

    with pytest.raises(ConfigError) as caught:
        load_config(None, parse_overrides(overrides))
    assert named in str(caught.value)


def _started_run(tmp_path: Path, *assignments: str) -> Path:
    """A run directory as `tidal train` leaves it: the run's whole config written out."""
    from cluster.config import parse_overrides
    from cluster.driver import make_run_dir

    return make_run_dir(load_config(None, parse_overrides([f"run_root={tmp_path}", *assignments])))


def test_resume_goes_on_with_the_runs_saved_config_and_set_changes_it(tmp_path):
    from cluster.config import load_run_config, parse_overrides

    run_dir = _started_run(tmp_path, "steps=7", "learner.optim.lr=1e-6")
    cfg = load_run_config(run_dir, None, parse_overrides(["steps=9"]))
    assert (cfg.steps, cfg.learner.optim.lr, cfg.run_root) == (9, 1e-6, tmp_path)  # not the demo's 200 and 2e-4
    with pytest.raises(ConfigError, match="not a run directory"):
        load_run_config(tmp_path / "nothing", None, {})


def test_resume_refuses_a_config_file_with_other_settings_than_the_run(tmp_path):
    from cluster.config import load_run_config

    run_dir = _started_run(tmp_path, "steps=7")
    same = _write(tmp_path, f"run_root: {tmp_path}\nsteps: 7\n")
    assert load_run_config(run_dir, same, {}).steps == 7
    other = _write(tmp_path, f"run_root: {tmp_path}\nsteps: 7\nlearner:\n  optim:\n    lr: 0.001\n")
    with pytest.raises(ConfigError, match=r"differs from the run's own config in learner\.optim\.lr: 0\.0002 -> 0\.001"):
        load_run_config(run_dir, other, {})
