"""What a run started, so that nothing of it outlives its driver.

Local Redis shards end with the driver by themselves (buffer/shards.py). The processes of a local
Ray instance (GCS, raylet, dashboard and its agents, the actors' workers) do not all do so when
the driver is killed with SIGKILL. So a live driver keeps an entry in a machine-wide registry of
live runs (~/.cache/tidal/live): its own pid and start time, its Ray session directory, and the
processes it has started, refreshed as the run goes on. Every `tidal train`, new or resumed,
first reaps the entries whose driver is gone: their processes are killed (each one only if it is
still the process that was recorded: same pid and start time) and so is anything else that names
the dead run's Ray session on its command line.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)
LIVE_DIR = Path.home() / ".cache" / "tidal" / "live"
REFRESH_S = 10.0


def _identity(process: psutil.Process) -> list:
    return [process.pid, process.create_time()]


class LiveRun:
    """This driver's entry in the registry of live runs."""

    def __init__(self, run_dir: Path, live_dir: Path = LIVE_DIR) -> None:
        live_dir.mkdir(parents=True, exist_ok=True)
        me = psutil.Process()
        self.path = live_dir / f"{me.pid}-{int(me.create_time())}.json"
        self.entry = {"driver": _identity(me), "run_dir": str(run_dir), "ray_session": None, "processes": []}
        self._refreshed = 0.0
        self.refresh(force=True)

    def set_ray_session(self, session_dir: str) -> None:
        self.entry["ray_session"] = session_dir
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Record the processes this driver has started so far (at most every REFRESH_S)."""
        if not force and time.monotonic() - self._refreshed < REFRESH_S:
            return
        self._refreshed = time.monotonic()
        children = []
        for child in psutil.Process().children(recursive=True):
            try:
                children.append(_identity(child))
            except psutil.Error:
                continue
        self.entry["processes"] = children
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.entry))
        os.replace(temporary, self.path)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def _alive(identity: list) -> psutil.Process | None:
    """The process if it still is the one recorded (a reused pid is someone else's)."""
    pid, started = identity
    try:
        process = psutil.Process(pid)
        return process if abs(process.create_time() - started) < 1.0 else None
    except psutil.Error:
        return None


def _session_processes(session_dir: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(session_dir in part for part in process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return found


def reap_orphans(live_dir: Path = LIVE_DIR) -> list[str]:
    """Kill what dead drivers left running; returns one line per reaped run."""
    if not live_dir.is_dir():
        return []
    reaped = []
    for path in sorted(live_dir.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if _alive(entry["driver"]) is not None:
            continue  # a live run: not ours to touch
        victims = {p.pid: p for p in filter(None, map(_alive, entry["processes"]))}
        if entry.get("ray_session"):
            victims |= {p.pid: p for p in _session_processes(entry["ray_session"])}
        for process in victims.values():
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
        psutil.wait_procs(list(victims.values()), timeout=10)
        path.unlink(missing_ok=True)
        reaped.append(f"run {entry['run_dir']}: its driver is gone; killed {len(victims)} leftover processes")
    return reaped
