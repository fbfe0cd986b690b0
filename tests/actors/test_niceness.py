"""A rollout worker lowers the CPU priority of its whole process, threads started before it included."""

import subprocess
import sys

import pytest

CHILD = """
import os, threading
from pathlib import Path
from actors.rollout_worker import run_at_niceness

started = threading.Event()
earlier = threading.Thread(target=lambda: started.wait(30))  # like Ray's threads: running before the actor is built
earlier.start()
run_at_niceness(7)
later = threading.Thread(target=lambda: started.wait(30))
later.start()
values = [os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in Path("/proc/self/task").iterdir()]
started.set()
print(len(values), sorted(set(values)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_every_thread_of_the_process_runs_at_the_niceness():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    threads, values = out.stdout.split(" ", 1)
    assert int(threads) >= 3  # main, earlier, later (and any the imports started)
    assert values.strip() == "[7]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_a_process_already_nicer_keeps_its_niceness():
    # Lowering niceness needs privileges: an unprivileged run started under `nice -n 15` must not fail.
    code = ("import os; from actors.rollout_worker import run_at_niceness; run_at_niceness(7); "
            "print(os.getpriority(os.PRIO_PROCESS, 0))")
    out = subprocess.run(["nice", "-n", "15", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "15"
