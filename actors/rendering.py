"""Observations to tokens, once each: the token-in / token-out half of the episode contract.

The context of an episode only grows. The first observation is tokenized whole; every later
observation is tokenized on its own and appended after the tokens the model sampled, so the past
is never re-tokenized (re-tokenizing a model's output can change its tokens, and then the
logprobs the learner computes are not those of what the engine sampled).

Plain models: the first observation is encoded with the tokenizer's special tokens (BOS), later
ones without. Chat models (the tokenizer has a chat template): the first observation's messages
are rendered with the generation prompt; a later observation is rendered as the continuation of
the same conversation: what the template would put between the end of the model's turn and the
next generation prompt, found by rendering a short stand-in conversation with and without the
new messages and keeping the difference. The model's own end-of-turn token, when it sampled
one, is not repeated.
"""

from __future__ import annotations

from typing import Protocol

from envs import Observation

_STAND_IN = [{"role": "user", "content": "@@user@@"}, {"role": "assistant", "content": "@@assistant@@"}]


class RenderError(ValueError):
    """The tokenizer's chat template cannot render an observation as a continuation."""


class Renderer(Protocol):
    def first(self, observation: Observation) -> list[int]:
        """Tokens of an episode's first observation (for one role)."""

    def next(self, observation: Observation, last_token: int | None) -> list[int]:
        """Tokens of a later observation, appended after the model's turn that ended with `last_token`."""

    def text(self, token_ids: list[int]) -> str:
        """A model turn as text for the env: special tokens (EOS) dropped."""


class PlainRenderer:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def first(self, observation: Observation) -> list[int]:
        return list(self.tokenizer(observation.text)["input_ids"])

    def next(self, observation: Observation, last_token: int | None) -> list[int]:
        return list(self.tokenizer(observation.text, add_special_tokens=False)["input_ids"])

    def text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


def _messages(observation: Observation) -> list[dict[str, str]]:
    return observation.messages if observation.messages is not None else [{"role": "user", "content": observation.text}]


class ChatRenderer(PlainRenderer):
    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        before = self._render(_STAND_IN, generation_prompt=False)
        closed = before[before.rindex(_STAND_IN[-1]["content"]) + len(_STAND_IN[-1]["content"]):]
        self._turn_end = closed  # what the template writes after an assistant message's content
        self._before = before

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def first(self, observation: Observation) -> list[int]:
        text = self._render(_messages(observation), generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def next(self, observation: Observation, last_token: int | None) -> list[int]:
        after = self._render(_STAND_IN + _messages(observation), generation_prompt=True)
        if not after.startswith(self._before):
            raise RenderError("the chat template re-renders earlier turns when a message is added; "
                              "its observations cannot be appended as a continuation")
        continuation = self._turn_end + after[len(self._before):]
        ended = self.tokenizer.decode([last_token]) if last_token is not None else ""
        if last_token in self.tokenizer.all_special_ids and ended and continuation.startswith(ended):
            continuation = continuation[len(ended):]  # the model sampled the end of its turn itself
        return list(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])


def make_renderer(tokenizer) -> Renderer:
    """Chat rendering for tokenizers with a chat template, plain text otherwise."""
    return ChatRenderer(tokenizer) if getattr(tokenizer, "chat_template", None) else PlainRenderer(tokenizer)
