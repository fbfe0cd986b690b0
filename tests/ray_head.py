"""A `ray start --head` cluster of the tests' own: token auth on, its own token file and temp dir,
stopped by process group (`ray stop` would also stop a run that is live on this machine)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from buffer.ports import free_port


def token_file(directory: Path, token: str) -> Path:
    path = directory / "auth_token"
    path.write_text(token)
    path.chmod(0o600)
    return path


@dataclass
class Head:
    address: str  # the GCS, for ray.init / ray.address
    dashboard: str  # the dashboard and Jobs API URL
    environ: dict[str, str]  # names the token file, for clients


@contextmanager
def ray_head(*extra: str, timeout_s: float = 60.0):
    """`extra`: more `ray start` options, e.g. ("--num-gpus", "4"). Short temp dir: Ray's socket
    paths have a length limit."""
    temp_dir = Path(tempfile.mkdtemp(prefix="th", dir="/tmp"))
    environ = {"RAY_AUTH_TOKEN_PATH": str(token_file(temp_dir, os.urandom(16).hex()))}
    gcs_port, dashboard_port = free_port(), free_port()
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(gcs_port),
               "--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()), "--include-dashboard", "true",
               "--disable-usage-stats", "--temp-dir", str(temp_dir), *extra]
    # Jobs and actors run `python` from PATH: make it this interpreter (the project's venv).
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path, **environ}
    env.pop("RAY_ADDRESS", None)
    log_path = temp_dir / "head.log"
    log = log_path.open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_dashboard(dashboard, process, log_path, timeout_s)
        yield Head(f"127.0.0.1:{gcs_port}", dashboard, environ)
    finally:
        _stop_process_group(process)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            requests.get(f"{url}/api/version", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.5)
    raise RuntimeError(f"dashboard at {url} not up after {timeout_s}s:\n{log.read_text()[-2000:]}")


def _stop_process_group(process: subprocess.Popen) -> None:
    """`ray start --block` and everything it started share one process group (our own session)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # raylet and gcs do not always follow the SIGTERM
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
