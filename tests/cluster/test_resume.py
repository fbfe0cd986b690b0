"""Resuming a run (`tidal train --resume`): its metrics go on from what the stopped run left. The
wall clock of its records keeps growing from the last record kept, and a metrics.jsonl whose last
line a kill cut short is read without it."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

from cluster.driver import resume
from cluster.metrics import MetricsWriter, read_metrics


def test_a_resumed_runs_wall_clock_goes_on_from_its_last_record_kept(tmp_path):
    writer = MetricsWriter(tmp_path)
    for step in range(7):  # the stopped run: a record every 100 s; its latest checkpoint is of step 4
        writer.write({"step": step, "wall_s": 100.0 * step})
    learners = SimpleNamespace(restore=lambda: {"driver": {"step": 4}, "policy_version": 4})
    run = SimpleNamespace(learners=learners, writer=writer, note=lambda message: None, started=time.time())
    assert resume(run) == 4
    assert abs(time.time() - run.started - 400.0) < 5.0  # the resumed run's next wall_s
    writer.close()


def test_a_last_line_cut_short_by_a_kill_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "wall_s": 1.0}\n{"step": 1, "wall_s": 2.0}\n{"step": 2, "wa')
    with caplog.at_level(logging.WARNING, logger="cluster.metrics"):
        writer = MetricsWriter(tmp_path)
    assert [r["step"] for r in writer.records] == [0, 1]
    assert "left out its last line, cut short" in caplog.text
    writer.write({"step": 2, "wall_s": 3.0})  # appended on a line of its own
    writer.close()
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
