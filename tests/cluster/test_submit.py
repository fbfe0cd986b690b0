"""`tidal submit`: token lookup and headers, local validation before any network call, and real
submissions to a `ray start --head` cluster of our own with token auth on (its own token file and
temp dir, stopped by process group: `ray stop` would also stop a run that is live on this machine)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest
import requests
from ray.job_submission import JobStatus

from cluster.errors import ConfigError
from cluster.submit import (SubmitError, auth_headers, find_auth_token, job_spec, make_job_client, register,
                            submit_run, validate_for_cluster)
from tests.ray_head import ray_head, token_file

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "example-cluster.yaml"
UNREACHABLE = "http://127.0.0.1:1"  # nothing listens there: reaching it would fail differently


# ---- token and request building ----------------------------------------------------------------

def test_token_lookup_order(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert find_auth_token({"RAY_AUTH_TOKEN": " from-env ", "RAY_AUTH_TOKEN_PATH": str(token_file)}) == "from-env"
    assert find_auth_token({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == "from-file"
    with pytest.raises(SubmitError, match=str(tmp_path / "missing")):
        find_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    assert find_auth_token({"RAY_AUTH_TOKEN_PATH": str(empty)}) is None
    assert auth_headers("abc") == {"Authorization": "Bearer abc"}
    assert auth_headers(None) == {}


def test_job_spec_uploads_the_working_dir_and_runs_train(tmp_path):
    spec = job_spec(EXAMPLE, REPO)
    assert spec.entrypoint == "python -m cluster.cli train configs/example-cluster.yaml"
    assert spec.runtime_env["working_dir"] == str(REPO)
    assert {".venv", ".git", "runs"} <= set(spec.runtime_env["excludes"])
    outside = tmp_path / "run.yaml"
    outside.write_text("steps: 1\n")
    with pytest.raises(ConfigError, match="outside the working dir"):
        job_spec(outside, REPO)


def test_bad_config_fails_before_submission(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ray:\n  address: auto\nrollout:\n  num_workerz: 3\n")
    with pytest.raises(ConfigError, match=r"rollout\.num_workerz"):
        submit_run(bad, UNREACHABLE, tmp_path)  # a SubmitError would mean it tried the network first
    local = tmp_path / "local.yaml"
    local.write_text("steps: 1\n")
    with pytest.raises(ConfigError, match=r"ray\.address"):
        submit_run(local, UNREACHABLE, tmp_path)
    with pytest.raises(ConfigError, match=r"model\.path"):
        submit_run(EXAMPLE, UNREACHABLE, REPO)  # the placeholder model is not here ...
    assert validate_for_cluster(EXAMPLE, model_on_cluster=True).ray.address == "auto"  # ... unless on the cluster


def test_unreachable_address_is_a_submit_error(tmp_path):
    with pytest.raises(SubmitError, match="cannot reach the Ray Jobs API at http://127.0.0.1:1") as caught:
        make_job_client(UNREACHABLE, {"RAY_AUTH_TOKEN_PATH": str(token_file(tmp_path, "t0ken"))})
    assert "dashboard up" in str(caught.value) and "token" not in str(caught.value)  # no one refused it


# ---- a real head node with token auth ---------------------------------------------------------

@pytest.fixture(scope="module")
def head():
    """(dashboard URL, environ naming its token file)."""
    with ray_head("--num-cpus", "1") as cluster:
        yield cluster.dashboard, cluster.environ


def _wait_for_job(client, job_id: str, timeout_s: float = 90.0) -> JobStatus:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout_s}s: {client.get_job_status(job_id)}")


def test_auth_is_on_and_the_token_header_passes_it(head):
    url, environ = head
    assert requests.get(f"{url}/api/jobs/", timeout=5).status_code == 401
    token = find_auth_token(environ)
    assert requests.get(f"{url}/api/jobs/", headers=auth_headers(token), timeout=5).status_code == 200


def test_a_job_submitted_with_the_token_succeeds(head):
    url, environ = head
    client = make_job_client(url, environ)
    job_id = client.submit_job(entrypoint="python -c \"print('tidal-submit-ok')\"")
    assert _wait_for_job(client, job_id) == JobStatus.SUCCEEDED
    assert "tidal-submit-ok" in client.get_job_logs(job_id)


def test_a_wrong_token_is_refused_without_echoing_it(head):
    url, _ = head
    with pytest.raises(SubmitError, match="rejected the token") as caught:
        make_job_client(url, {"RAY_AUTH_TOKEN": "not-the-cluster-token"})
    assert "not-the-cluster-token" not in str(caught.value)


def test_submit_command_uploads_and_train_validates_on_the_cluster(head, monkeypatch, capsys):
    """The whole path: local checks, upload of the repo, `train` on the cluster, which checks the model path
    there; the example's placeholder model exists on neither machine, so the job fails on it, fast."""
    url, environ = head
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", environ["RAY_AUTH_TOKEN_PATH"])
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    parser = argparse.ArgumentParser(prog="tidal")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["submit", str(EXAMPLE), "--address", url, "--working-dir", str(REPO),
                              "--model-on-cluster"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    job_id = printed.split()[2]  # "submitted job <id> to <url>"
    assert f"ray job logs --address {url} --follow {job_id}" in printed
    assert find_auth_token(environ) not in printed
    client = make_job_client(url, environ)
    assert _wait_for_job(client, job_id) == JobStatus.FAILED
    logs = client.get_job_logs(job_id)
    assert "model.path" in logs and "/models/Qwen2.5-1.5B-Instruct" in logs
    assert "exit code 2" in client.get_job_info(job_id).message
