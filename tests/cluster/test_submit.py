"""`tidal submit`: token lookup and headers, local validation before any network call, and real
submissions to a `ray start --head` cluster of our own with token auth on (its own token file and
temp dir, stopped by process group: `ray stop` would also stop a run that is live on this machine)."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import pytest
import requests
from ray.job_submission import JobStatus

from cluster.cli import main
from cluster.config import load_config, parse_overrides
from cluster.errors import ConfigError
from cluster.submit import (SubmitError, auth_headers, find_auth_token, job_spec, make_job_client, register,
                            submit_run, validate_for_cluster)
from tests.http_stub import fake_server
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
    spec = job_spec(EXAMPLE, REPO, "/shared/tidal/runs")
    assert spec.entrypoint == "python -m cluster.cli train configs/example-cluster.yaml"
    assert spec.run_root == "/shared/tidal/runs"  # an absolute run_root is the config's own business
    assert spec.runtime_env["working_dir"] == str(REPO)
    assert {".venv", ".git", "runs"} <= set(spec.runtime_env["excludes"])
    outside = tmp_path / "run.yaml"
    outside.write_text("steps: 1\n")
    with pytest.raises(ConfigError, match="outside the working dir"):
        job_spec(outside, REPO, "runs")


def test_a_relative_run_root_goes_to_the_home_dir_not_rays_temporary_copy():
    """A job runs in Ray's temporary copy of the working dir: relative outputs would be lost with it."""
    spec = job_spec(EXAMPLE, REPO, "runs")
    assert spec.entrypoint == "python -m cluster.cli train configs/example-cluster.yaml --set 'run_root=~/tidal-runs'"
    assert spec.run_root == "~/tidal-runs"
    override = shlex.split(spec.entrypoint)[-1]  # as `train` gets it on the cluster, which expands the ~ there
    assert load_config(None, parse_overrides([override])).run_root == Path.home() / "tidal-runs"


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


# ---- what the user sees when the server is not a Ray dashboard, or refuses the job --------------

RAY_VERSION = (200, json.dumps({"ray_version": "2.60.0", "version": "4"}))
SECRET = "s3cret-t0ken-never-printed"


def _tidal_submit(tmp_path, monkeypatch, capsys, url: str, config: str = "ray:\n  address: auto\nsteps: 1\n"):
    """`tidal submit` of a small config, as the user runs it: (exit code, stdout, stderr)."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", SECRET)
    (tmp_path / "run.yaml").write_text(config)
    code = main(["submit", str(tmp_path / "run.yaml"), "--address", url, "--working-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    return code, out, err


@pytest.mark.parametrize("version_reply, answered", [
    (None, "HTTP 404"),  # e.g. another web server: a 404 is not about the token
    ((502, "Bad Gateway"), "HTTP 502"),
    ((200, "<html>a router's login page</html>"), "a page without one"),
])
def test_not_a_ray_dashboard_is_named_and_not_blamed_on_the_token(tmp_path, monkeypatch, capsys, version_reply,
                                                                   answered):
    replies = {("GET", "/api/version"): version_reply} if version_reply else {}
    with fake_server(replies) as (url, _):
        code, out, err = _tidal_submit(tmp_path, monkeypatch, capsys, url)
    assert code == 1 and not out
    assert err == (f"tidal: {url} does not look like a Ray dashboard: its /api/version answered {answered}, not a "
                   "Ray version; pass the cluster's dashboard URL (`ray start --head` serves it on port 8265)\n")


@pytest.mark.parametrize("status", [401, 403])
def test_only_an_auth_refusal_mentions_the_token(tmp_path, monkeypatch, capsys, status):
    with fake_server({("GET", "/api/version"): (status, "Unauthorized")}) as (url, _):
        code, _, err = _tidal_submit(tmp_path, monkeypatch, capsys, url)
    assert code == 1
    assert err.startswith(f"tidal: cannot reach the Ray Jobs API at {url}: Authentication")
    assert "the cluster rejected the token: copy the head node's" in err


SUBMITTED = {("GET", "/api/version"): RAY_VERSION, ("GET", "/api/packages/"): (200, ""),  # the upload exists
             ("POST", "/api/jobs/"): (200, json.dumps({"job_id": None, "submission_id": "raysubmit_1"}))}


def test_an_address_without_a_scheme_is_http_as_for_ray(tmp_path, monkeypatch, capsys):
    with fake_server(SUBMITTED) as (url, received):
        code, out, err = _tidal_submit(tmp_path, monkeypatch, capsys, url.removeprefix("http://"))
    assert code == 0 and not err
    assert [method for method, _, _ in received if method == "POST"] == ["POST"]
    assert f"submitted job raysubmit_1 to {url}\n" in out and f"ray job logs --address {url} --follow" in out


@pytest.mark.parametrize("status, body, message", [
    (500, "No available agent to submit job, please try again later.",
     "HTTP 500: No available agent to submit job, please try again later."),
    (400, "Traceback (most recent call last):\n  File \"job_head.py\", line 1, in submit_job\n"
          "ValueError: Job with submission_id tidal-1 already exists.",
     "HTTP 400: ValueError: Job with submission_id tidal-1 already exists."),
])
def test_a_refused_submission_is_one_line_naming_the_address_and_the_servers_message(
        tmp_path, monkeypatch, capsys, status, body, message):
    replies = SUBMITTED | {("POST", "/api/jobs/"): (status, body)}
    with fake_server(replies) as (url, _):
        code, out, err = _tidal_submit(tmp_path, monkeypatch, capsys, url)
    assert code == 1 and not out
    assert err == f"tidal: the Ray Jobs API at {url} did not take the job: {message}\n"


MOVED = ("; run_root is relative, and a job runs in a temporary copy of the working dir: set an absolute run_root "
         "to choose")


@pytest.mark.parametrize("run_root, printed, entrypoint", [
    (None, f"~/tidal-runs/<date>-<time>-mine on the head node{MOVED}", " --set 'run_root=~/tidal-runs'"),
    ("runs/x", f"~/tidal-runs/<date>-<time>-mine on the head node{MOVED}", " --set 'run_root=~/tidal-runs'"),
    # `~` is the head node's home, expanded there: not this machine's, as loading the config here makes it
    ("~/x", "~/x/<date>-<time>-mine on the head node\n", ""),
    ("~/tidal-runs", "~/tidal-runs/<date>-<time>-mine on the head node\n", ""),  # chosen, not moved
    ("/shared/x", "/shared/x/<date>-<time>-mine on the head node\n", ""),
])
def test_submit_says_where_the_outputs_go(tmp_path, monkeypatch, capsys, run_root, printed, entrypoint):
    config = "name: mine\nray:\n  address: auto\n" + (f"run_root: {run_root}\n" if run_root else "")
    with fake_server(SUBMITTED) as (url, received):
        code, out, _ = _tidal_submit(tmp_path, monkeypatch, capsys, url, config)
    assert code == 0
    assert f"its outputs:      {printed}" in out
    [submitted] = [json.loads(body) for method, path, body in received if method == "POST"]
    assert submitted["entrypoint"] == "python -m cluster.cli train run.yaml" + entrypoint  # the YAML's run_root


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
    assert "its outputs:      /shared/tidal/runs/<date>-<time>-cluster-example on the head node\n" in printed
    assert f"ray job logs --address {url} --follow {job_id}" in printed
    assert find_auth_token(environ) not in printed
    client = make_job_client(url, environ)
    assert _wait_for_job(client, job_id) == JobStatus.FAILED
    logs = client.get_job_logs(job_id)
    assert "model.path" in logs and "/models/Qwen2.5-1.5B-Instruct" in logs
    assert "exit code 2" in client.get_job_info(job_id).message
