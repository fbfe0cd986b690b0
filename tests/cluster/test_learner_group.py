"""LearnerGroup's update begun ahead (async mode records one step while the next one runs), on a
local Ray with counting stand-in ranks: a begun update is collected, not run twice; a final
checkpoint settles it first; a restart forgets it. The real learner's path is covered by the
integration tests (tests/integration/test_pipeline.py, test_faults.py)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import ray

from cluster.admission import RemoteAdmissionController
from cluster.checkpoints import CheckpointConfig
from cluster.driver import _save_on_the_way_out
from cluster.errors import RunFailed
from cluster.learner_group import LearnerGroup
from envs import CurriculumConfig


@ray.remote
class CountingRank:
    """Answers what LearnerGroup asks of a rank; each train_step is one more version."""

    def __init__(self, rank: int, step_s: float = 0.0) -> None:
        self.rank, self.version, self.saved, self.step_s = rank, 0, [], step_s

    def rendezvous_address(self):
        return "127.0.0.1", 0

    def setup(self, address, port) -> None:
        pass

    def train_step(self) -> dict:
        time.sleep(self.step_s)
        self.version += 1
        return {"policy_version": self.version, "groups": 8}

    def activity(self) -> str:
        return "training"

    def save_checkpoint(self, directory, tag, driver_state, keep) -> None:
        self.saved.append((tag, self.version))

    def state(self) -> tuple[int, list]:
        return self.version, self.saved


pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture
def group(tmp_path) -> LearnerGroup:
    learners = LearnerGroup(CountingRank.remote, 2, tmp_path, CheckpointConfig())
    learners.start()
    yield learners
    learners.kill()


def _states(learners: LearnerGroup) -> list[tuple[int, list]]:
    """Each rank's (version, checkpoints saved as (tag, version))."""
    return ray.get([rank.state.remote() for rank in learners.ranks], timeout=30)


def test_a_begun_update_is_collected_by_the_next_step_not_run_again(group):
    assert group.step(10)["policy_version"] == 1
    group.begin_step()
    record = group.step(10)
    assert record["policy_version"] == 2 and record["groups"] == 16  # summed over the 2 ranks
    assert [version for version, _ in _states(group)] == [2, 2]
    assert group.step(10)["policy_version"] == 3  # nothing begun: this one runs now


def test_settle_finishes_a_begun_update_and_a_checkpoint_waits_for_it(group):
    assert group.settle(10) is None  # nothing begun
    group.begin_step()
    with pytest.raises(RuntimeError, match="cannot checkpoint step 0: a later update is in flight"):
        group.save(0, {})
    assert group.settle(10)["policy_version"] == 1
    group.save(1, {"step": 1})
    assert [saved for _, saved in _states(group)] == [[("step1", 1)], [("step1", 1)]]


def test_an_update_interrupted_while_it_is_collected_is_settled_not_lost(group, monkeypatch):
    """Ctrl-C while the driver waits for an update: the update goes on in the ranks, so the final
    checkpoint holds it, and settle() must still return its record (it was dropped, and the resumed
    run's versions ran one ahead of its steps)."""
    with monkeypatch.context() as patch:
        patch.setattr(ray, "wait", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            group.step(10)
    assert group.settle(10)["policy_version"] == 1
    assert [version for version, _ in _states(group)] == [1, 1]  # collected, not run again


def test_a_final_checkpoint_is_saved_when_the_update_in_flight_outlasts_its_bound(tmp_path):
    """Ctrl-C while an update is starved of groups: the final checkpoint must not be lost waiting on it.
    The update (4.5 s) outlasts the 3 s bound; the checkpoint is saved after it, unrecorded."""
    learners = LearnerGroup(lambda rank: CountingRank.remote(rank, step_s=4.5), 1, tmp_path, CheckpointConfig())
    learners.start()
    notes = []
    run = SimpleNamespace(cfg=SimpleNamespace(checkpoint=SimpleNamespace(timeout_s=3.0)), learners=learners,
                          note=notes.append, started=time.time(),
                          admission=RemoteAdmissionController.remote(4, 0, CurriculumConfig(), ["a"], 0,
                                                                     SimpleNamespace(size=lambda: 0)))
    try:
        learners.begin_step()
        _save_on_the_way_out(run, 5, "tidal train --resume RUN")
        assert "the update in flight did not finish (LearnerStalled" in notes[1], notes
        assert notes[2].startswith("checkpoint of step 5 saved"), notes
        assert _states(learners) == [(1, [("step5", 1)])]
    finally:
        learners.kill()


def test_a_long_step_supervises_between_waits_and_what_that_raises_ends_the_wait(tmp_path):
    """A learner waiting for groups must not hide a rollout fleet that cannot go on: the run stopped only
    when the learner's sample timed out (120 s), with the real cause noticed at the next step."""
    learners = LearnerGroup(lambda rank: CountingRank.remote(rank, step_s=2.5), 1, tmp_path, CheckpointConfig())
    learners.start()
    calls = []

    def fleet_gone() -> None:
        raise RunFailed("prompts over the token budget")

    try:
        assert learners.step(30, while_waiting=lambda: calls.append(time.monotonic()))["policy_version"] == 1
        assert 1 <= len(calls) <= 3, calls  # about every SUPERVISE_EVERY_S of the 2.5 s step
        started = time.monotonic()
        with pytest.raises(RunFailed, match="prompts over the token budget"):
            learners.step(30, while_waiting=fleet_gone)
        assert time.monotonic() - started < 2.0  # at the first supervision, not when the step ends
        assert learners.settle(30)["policy_version"] == 2  # the update itself went on, and is collected once
    finally:
        learners.kill()


def test_a_restart_forgets_the_update_begun_on_the_old_ranks(group):
    group.begin_step()
    group.restart()
    assert group.settle(10) is None
    assert group.step(10)["policy_version"] == 1  # the new ranks' first update


def test_a_categorys_signal_is_weighted_by_its_groups_on_each_rank():
    """The curriculum multiplies signal/<c> by signal_groups/<c>: the mean |A| must be over the
    groups, not over the ranks (rank 0: one group at 1.0, rank 1: nine at 0.0 -> 0.1, not 0.5)."""
    from cluster.learner_group import merge_rank_metrics

    merged = merge_rank_metrics([{"signal/hard": 1.0, "signal_groups/hard": 1.0, "loss": 2.0},
                                 {"signal/hard": 0.0, "signal_groups/hard": 9.0, "loss": 4.0, "signal/easy": 0.5,
                                  "signal_groups/easy": 2.0}])
    assert merged == {"signal/hard": 0.1, "signal_groups/hard": 10.0, "loss": 3.0, "signal/easy": 0.5,
                      "signal_groups/easy": 2.0}
