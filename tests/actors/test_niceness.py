"""A rollout worker lowers the CPU priority of its whole process, threads started before it included,
by steps from where it was started."""

import subprocess
import sys

import pytest

CHILD = """
import os, threading
from pathlib import Path
from actors.rollout_worker import run_nicer

started = threading.Event()
earlier = threading.Thread(target=lambda: started.wait(30))  # like Ray's threads: running before the actor is built
earlier.start()
run_nicer(7)
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
@pytest.mark.parametrize(("started_at", "expected"), [(5, 12), (15, 19)])
def test_the_steps_count_from_the_processs_own_niceness_up_to_19(started_at, expected):
    # Ray starts actors at a niceness of its own (15 unless configured): the workers must still go below the learner.
    code = ("import os; from actors.rollout_worker import run_nicer; run_nicer(7); "
            "print(os.getpriority(os.PRIO_PROCESS, 0))")
    out = subprocess.run(["nice", "-n", str(started_at), sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert int(out.stdout) == expected
