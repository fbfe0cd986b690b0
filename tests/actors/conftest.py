"""A scripted engine with the episode loop's Engine interface, and the tokenizers the tests use."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from actors.engine import Finished, Sample
from cluster.demo_model import build_char_tokenizer

EOS = 2


class ScriptedEngine:
    """Answers each request with `reply(prompt_ids, sample_index)` (EOS appended unless the reply
    already ends with it), cut at max_tokens. `steps_to_finish` engine steps per request; every
    sampled token gets logprob -0.5 and the loaded version."""

    def __init__(self, reply: Callable[[list[int], int], list[int]], max_model_len: int = 64,
                 steps_to_finish: int = 1) -> None:
        self.reply = reply
        self.max_model_len = max_model_len
        self.steps_to_finish = steps_to_finish
        self.version = 0
        self.requests: list[tuple[str, list[int], int, int]] = []  # (id, prompt, max_tokens, n), all ever added
        self._running: dict[str, list] = {}
        self.aborted: list[str] = []

    def add(self, request_id, prompt_ids, sampling, max_tokens, n) -> None:
        assert len(prompt_ids) + max_tokens <= self.max_model_len, "the loop asked for more than the window"
        self.requests.append((request_id, list(prompt_ids), max_tokens, n))
        self._running[request_id] = [list(prompt_ids), max_tokens, n, self.steps_to_finish]

    def step(self) -> list[Finished]:
        finished = []
        for request_id, state in list(self._running.items()):
            state[3] -= 1
            if state[3] > 0:
                continue
            prompt, max_tokens, n, _ = self._running.pop(request_id)
            finished.append(Finished(request_id, [self._sample(prompt, i, max_tokens) for i in range(n)]))
        return finished

    def _sample(self, prompt: list[int], index: int, max_tokens: int) -> Sample:
        tokens = list(self.reply(prompt, index))
        if not tokens or tokens[-1] != EOS:
            tokens.append(EOS)
        cut = len(tokens) > max_tokens
        tokens = tokens[:max_tokens]
        return Sample(tokens, [-0.5] * len(tokens), [self.version] * len(tokens), "length" if cut else "stop")

    def has_unfinished(self) -> bool:
        return bool(self._running)

    def abort(self, request_ids) -> None:
        self.aborted += list(request_ids)
        for request_id in request_ids:
            self._running.pop(request_id, None)

    def load_weights(self, named_tensors, version: int) -> None:
        self.version = version


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer(64)
