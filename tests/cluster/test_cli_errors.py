"""What a user sees when a run cannot start or cannot train: one `tidal: ...` line that names the
cause, not a traceback; `runs/latest` left on the last run that started; and a learner starved of
groups told why the workers made none."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest

from buffer.ports import free_port
from cluster import driver
from cluster.cli import main
from cluster.config import load_config, parse_overrides
from tests.http_stub import fake_server


@pytest.fixture
def http_port():
    """A web server where the shard should be."""
    with fake_server({}) as (url, _):
        yield urlparse(url).port


@pytest.fixture
def run_root(tmp_path, monkeypatch) -> Path:
    """A run root whose `latest` points at an earlier run (what `--resume runs/latest` would pick)."""
    monkeypatch.setattr(driver, "reap_orphans", lambda: [])  # other sessions' leftovers are not this test's
    (tmp_path / "20260101-000000-earlier").mkdir()
    (tmp_path / "latest").symlink_to("20260101-000000-earlier")
    return tmp_path


def _train(run_root: Path, shard_url: str) -> int:
    return main(["train", "--set", f"run_root={run_root}", "--set", f'replay.shard_urls=["{shard_url}"]'])


@pytest.mark.parametrize("server, said", [("closed", "refused the connection"),
                                          ("http", r"answered, but not as Redis does \(not a Redis server\?\)")])
def test_a_shard_that_is_down_or_not_redis_is_one_line_and_leaves_latest_alone(run_root, capsys, server, said,
                                                                                request):
    port = free_port() if server == "closed" else request.getfixturevalue("http_port")  # free: nothing listens
    assert _train(run_root, f"redis://127.0.0.1:{port}") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("tidal:")]
    assert re.match(f"tidal: replay shard 127.0.0.1:{port} {said}", line), line
    # The run never started: `--resume runs/latest` still finds the earlier run; the failed one keeps its dir.
    assert (run_root / "latest").resolve() == run_root / "20260101-000000-earlier"
    [failed] = [p for p in run_root.iterdir() if p.name.endswith("-demo")]
    assert (failed / "config.yaml").is_file()


def test_latest_moves_to_a_new_run_once_it_has_started(tmp_path):
    run_dir = driver.make_run_dir(load_config(None, parse_overrides([f"run_root={tmp_path}"])))
    assert (run_dir / "config.yaml").is_file() and not (tmp_path / "latest").exists()
    driver.point_latest(run_dir)
    assert (tmp_path / "latest").resolve() == run_dir


def test_the_learners_starvation_names_the_episodes_failures():
    """A prompt over the budget used to show only as "the learner got no groups ... 1 ready"."""
    over = ("the first observation is 300 tokens, which leaves no room to generate under the budget of 256 "
            "(rollout.limits.max_tokens, rollout.engine.max_model_len)")
    stats = [{"name": "w0", "episode_errors": {"arithmetic/PromptOverBudget": 16}, "last_episode_error": over},
             {"name": "w1", "episode_errors": {"arithmetic/PromptOverBudget": 8, "arithmetic/ValueError": 1},
              "last_episode_error": None}]
    workers = SimpleNamespace(counts=lambda: {"workers/alive": 2, "workers/starting": 0, "workers/restarts": 0},
                              last_errors={}, stats=lambda: stats)
    run = SimpleNamespace(workers=workers, replay=SimpleNamespace(size=lambda: 0))
    assert driver._fleet_state(run) == (
        "replay size 0; rollout workers: 2 ready, 0 starting, 0 restarts; failed episodes: "
        f"arithmetic/PromptOverBudget x24, arithmetic/ValueError x1, e.g. {over}")
    assert driver.episode_failures([{"name": "w0", "episode_errors": {}, "last_episode_error": None}]) == ""
