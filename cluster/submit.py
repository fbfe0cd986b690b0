"""`tidal submit CONFIG --address URL`: the same run as `tidal train CONFIG`, as a Ray job on a cluster.

Ray token authentication: a cluster with auth on answers 401 to the Jobs API without a bearer token.
The token is looked up the way Ray does it (RAY_AUTH_TOKEN, then the file at RAY_AUTH_TOKEN_PATH,
then ~/.ray/auth_token) and sent as an explicit `Authorization` header, which is what
RAY_AUTH_MODE=token makes Ray's own client do, without changing this process's Ray settings.
The token is never printed or logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml
from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from cluster.errors import ConfigError, ControlError

# Never uploaded with the working dir: environments, history and run outputs (checkpoints are large).
UPLOAD_EXCLUDES = [".venv", ".git", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache"]
DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"
# A job runs in Ray's temporary copy of the working dir (runtime_resources/.../_ray_pkg_...), which Ray
# deletes: a relative run_root there would lose the run's checkpoints and metrics. So a relative run_root
# (the default `runs`) becomes this durable one, in the home dir of the node that runs the job's driver
# (the head node), the way `tidal train` on that node keeps its runs; an absolute or ~ run_root is kept.
CLUSTER_RUN_ROOT = "~/tidal-runs"


class SubmitError(ControlError):
    """The job could not be submitted (unreachable address, missing or rejected token)."""


@dataclass(frozen=True)
class JobSpec:
    entrypoint: str
    runtime_env: dict
    run_root: str  # where the run's outputs go, on the cluster


def find_auth_token(environ: Mapping[str, str] = os.environ) -> str | None:
    """The Ray auth token for this client, or None when there is none (a cluster without auth)."""
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip()
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        if not path.is_file():
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path} does not exist")
    else:
        path = DEFAULT_TOKEN_PATH
    return (path.read_text().strip() or None) if path.is_file() else None


def use_cluster_token() -> None:
    """Before joining an existing cluster with ray.init: Ray's own client sends the token only in
    token mode; turn that on when a token is at hand and no mode was chosen (Ray's own rule for a
    local cluster; it also refreshes the mode Ray read at import). The token is never printed."""
    from ray._private.authentication import authentication_token_setup as token_setup

    # Ray warns that token auth "is enabled" when this turns it on: our choice, not news to the user.
    ray_logger = logging.getLogger(token_setup.__name__)
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)
    try:
        token_setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        ray_logger.setLevel(level)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def dashboard_url(address: str) -> str:
    """`address` with http:// when it names no scheme, as Ray's JobSubmissionClient reads it."""
    return address if "://" in address else f"http://{address}"


def make_job_client(address: str, environ: Mapping[str, str] = os.environ):
    """A JobSubmissionClient for the dashboard at `address`, authenticated when a token is available."""
    token = find_auth_token(environ)
    try:
        return JobSubmissionClient(address, headers=auth_headers(token))
    except ConnectionError as e:  # nothing answered: a token would not have helped
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {_first_line(e)}; is the cluster's "
                          "dashboard up at that address (`ray start --head` serves it on port 8265)?") from e
    except AuthenticationError as e:  # Ray's own, for a 401 or 403: the only replies that concern the token
        hint = ("the cluster rejected the token: copy the head node's (`ray get-auth-token` there) to "
                "~/.ray/auth_token or RAY_AUTH_TOKEN" if token else
                "if the cluster has token auth on, put its token (`ray get-auth-token` on the head node) in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN")
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {_first_line(e)}; {hint}") from e
    except (RuntimeError, ValueError, KeyError, requests.RequestException) as e:
        # Something answered the version check, but not with a Ray version: a 404 or another error
        # status (RuntimeError, HTTPError), or a page that is not Ray's JSON (ValueError, KeyError).
        raise SubmitError(f"{address} does not look like a Ray dashboard: its /api/version answered "
                          f"{_version_reply(e)}, not a Ray version; pass the cluster's dashboard URL "
                          "(`ray start --head` serves it on port 8265)") from e


def _version_reply(error: Exception) -> str:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code}"
    if isinstance(error, (ValueError, KeyError)):
        return "a page without one"
    not_found = re.match(r"Version check returned (\d+)", str(error))
    return f"HTTP {not_found[1]}" if not_found else _first_line(error)


# Ray's SDK reports a refused request as "Request failed with status code N: BODY." where BODY is the
# server's reply: a message, or a traceback whose last line is the error.
_REQUEST_FAILED = re.compile(r"Request failed with status code (\d+): (.*)\.$", re.DOTALL)


def _server_reply(error: Exception) -> str:
    """'HTTP N: the server's message' for a refused request, else the error's first line."""
    failed = _REQUEST_FAILED.match(str(error).strip())
    if not failed:
        return _first_line(error)
    lines = [line.strip() for line in failed[2].splitlines() if line.strip()]
    if not lines:
        return f"HTTP {failed[1]}"
    return f"HTTP {failed[1]}: {lines[-1] if lines[0].startswith('Traceback') else lines[0]}"


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def validate_for_cluster(config_path: Path, model_on_cluster: bool):
    """The checks `tidal train` would do, here and now, plus what a submitted run needs (a RunConfig)."""
    from cluster.config import load_config

    # A model that exists only on the cluster's disks cannot be checked here; `tidal train` checks it there.
    cfg = load_config(config_path, overrides={"model": {"path": None}} if model_on_cluster else None)
    if cfg.ray.address is None:
        raise ConfigError("ray.address: a submitted run joins the job's cluster; set it to 'auto' "
                          "(None would start a second, local Ray instance)")
    return cfg


def written_run_root(config_path: Path) -> str:
    """run_root as the (valid) config file writes it: loading the config expands a `~` on this machine,
    but the job expands it on the head node."""
    return str((yaml.safe_load(config_path.read_text()) or {}).get("run_root", "runs"))


def cluster_run_root(run_root: str) -> str:
    """Where outputs go on the cluster: `run_root` (as written) if absolute or under `~`, else CLUSTER_RUN_ROOT."""
    return run_root if run_root.startswith("~") or Path(run_root).is_absolute() else CLUSTER_RUN_ROOT


def job_spec(config_path: Path, working_dir: Path, run_root: str) -> JobSpec:
    """Entrypoint and runtime env: the working dir is uploaded and the run starts from it; its outputs
    go to cluster_run_root(run_root), never into Ray's temporary copy (`run_root` as written, `~` unexpanded)."""
    working_dir, config = working_dir.resolve(), config_path.resolve()
    if not working_dir.is_dir():
        raise ConfigError(f"working dir {working_dir} does not exist")
    try:
        relative = config.relative_to(working_dir)
    except ValueError as e:
        raise ConfigError(f"config {config_path} is outside the working dir {working_dir}: only the working dir "
                          "is uploaded, so put the config inside it") from e
    # `python -m cluster.cli` is `tidal`, but runs the uploaded code (the console script would run the
    # image's installed copy instead).
    command = ["python", "-m", "cluster.cli", "train", relative.as_posix()]
    root = cluster_run_root(run_root)
    if root != run_root:
        command += ["--set", f"run_root={root}"]  # quoted: config.py expands the `~` on the cluster
    return JobSpec(entrypoint=shlex.join(command),
                   runtime_env={"working_dir": str(working_dir), "excludes": list(UPLOAD_EXCLUDES)},
                   run_root=root)


def submit_run(config_path: Path, address: str, working_dir: Path = Path("."), *, model_on_cluster: bool = False,
               job_id: str | None = None) -> tuple[str, str, bool]:
    """Validate locally, then submit; returns the job id, where the run's dir will be (on the cluster) and
    whether that is CLUSTER_RUN_ROOT in place of a relative run_root. A bad config fails before any network call."""
    cfg = validate_for_cluster(config_path, model_on_cluster)
    run_root = written_run_root(config_path)
    spec = job_spec(config_path, working_dir, run_root)
    client = make_job_client(address)
    try:
        job_id = client.submit_job(entrypoint=spec.entrypoint, runtime_env=spec.runtime_env,
                                   submission_id=job_id, metadata={"tidal_run": cfg.name})
    except (AuthenticationError, RuntimeError, requests.RequestException) as e:
        raise SubmitError(f"the Ray Jobs API at {address} did not take the job: {_server_reply(e)}") from e
    return job_id, f"{spec.run_root}/<date>-<time>-{cfg.name}", spec.run_root != run_root


def _submit(args: argparse.Namespace) -> int:
    address = dashboard_url(args.address)
    job_id, run_dir, moved = submit_run(args.config, address, args.working_dir,
                                        model_on_cluster=args.model_on_cluster, job_id=args.job_id)
    note = ("; run_root is relative, and a job runs in a temporary copy of the working dir: set an absolute "
            "run_root to choose (on several nodes, a filesystem they all see)" if moved else "")
    print(f"submitted job {job_id} to {address}\n"
          f"its outputs:      {run_dir} on the head node{note}\n"
          f"follow its logs:  RAY_AUTH_MODE=token ray job logs --address {address} --follow {job_id}\n"
          f"its status:       RAY_AUTH_MODE=token ray job status --address {address} {job_id}\n"
          f"or the Jobs page of the dashboard at {address}")
    return 0


def register(subparsers) -> None:
    """Add `submit` to the `tidal` argparse subcommands."""
    submit = subparsers.add_parser("submit", help="run a config as a Ray job on a cluster")
    submit.add_argument("config", type=Path, help="YAML run config (inside --working-dir; set ray.address: auto)")
    submit.add_argument("--address", required=True,
                        help="the cluster's dashboard, e.g. http://head:8265 (head:8265 means http://)")
    submit.add_argument("--working-dir", type=Path, default=Path("."), help="uploaded to the cluster (default: .)")
    submit.add_argument("--model-on-cluster", action="store_true",
                        help="model.path exists on the cluster, not here: skip its local check")
    submit.add_argument("--job-id", help="submission id (default: Ray picks one)")
    submit.set_defaults(func=_submit)
