"""The collective weight receiver's thread never ends unseen: what stopped it is raised by the
engine thread's next `newer` (tests/integration covers receiving versions from a real learner)."""

from __future__ import annotations

import time

import pytest
import ray

import actors.weight_receiver as weight_receiver
from actors.weights import WeightFetchError


class _Call:
    """What `.remote()` returns here: ray.get (patched below) runs it."""

    def __init__(self, answer) -> None:
        self.answer = answer


class _Method:
    def __init__(self, answer) -> None:
        self.answer = answer

    def remote(self, *args) -> _Call:
        return _Call(self.answer)


class _Channel:
    """A weight channel whose learner never publishes a manifest, or whose actor is gone."""

    def __init__(self, manifest) -> None:
        self.manifest = _Method(manifest)


def _run(answer):
    if isinstance(answer, Exception):
        raise answer
    return answer() if callable(answer) else answer


@pytest.fixture
def quick_channel_calls(monkeypatch):
    monkeypatch.setattr(ray, "get", lambda call, timeout=None: _run(call.answer))
    monkeypatch.setattr(weight_receiver, "FETCH_TIMEOUT_S", 0.02)  # the manifest's bound: 10 x this


@pytest.mark.parametrize("manifest, named", [
    (None, "w0: the weight receiver stopped: TimeoutError: the learner published no weight manifest"),
    (RuntimeError("the weight channel actor died"), "w0: the weight receiver stopped: RuntimeError: the weight "
                                                    "channel actor died"),
])
def test_a_receiver_whose_thread_ended_raises_on_the_engine_threads_next_check(quick_channel_calls, manifest,
                                                                               named):
    receiver = weight_receiver.CollectiveReceiver(_Channel(manifest), "w0", 1 << 20, timeout_s=1.0)
    deadline = time.monotonic() + 5
    while receiver._thread.is_alive():
        assert time.monotonic() < deadline, "the receiver thread did not end"
        time.sleep(0.01)
    with pytest.raises(WeightFetchError) as caught:
        receiver.newer()
    assert str(caught.value) == named
