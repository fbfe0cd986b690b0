"""Observations to tokens, once each: the token-in / token-out half of the episode contract.

The context of an episode only grows. The first observation is tokenized whole; every later
observation is tokenized on its own and appended after the tokens the model sampled, so the past
is never re-tokenized (re-tokenizing a model's output can change its tokens, and then the
logprobs the learner computes are not those of what the engine sampled).

Plain models: the first observation is encoded with the tokenizer's special tokens (BOS), later
ones without. Chat models (the tokenizer has a chat template): the first observation's messages
are rendered with the generation prompt; a later observation is rendered as the continuation of
the same conversation: what the template would put between the end of the model's turn and the
next generation prompt, found by rendering a short stand-in conversation followed by the new
messages and keeping what follows the stand-in assistant's content (the end of its turn
included). The model's own end-of-turn token, when it sampled one, is not repeated.

A template or tokenizer that refuses an observation (a template's raise_exception: Gemma's
rejects a system role, Mistral's non-alternating roles) raises RenderError, which fails only
that episode.
"""

from __future__ import annotations

import functools
from typing import Protocol

from envs import Observation

_USER, _ASSISTANT = "@@user@@", "@@assistant@@"
_STAND_IN = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT}]


class RenderError(ValueError):
    """An observation cannot be rendered: the template or tokenizer refused it, or the template
    cannot render it as a continuation."""


def _refusals_as_render_errors(method):
    """Any failure of the template or tokenizer as RenderError: the one error the loop expects of a renderer."""
    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as e:
            raise RenderError(f"{type(e).__name__}: {e}") from e
    return wrapped


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

    @_refusals_as_render_errors
    def _encode(self, text: str, special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special_tokens)["input_ids"])

    def first(self, observation: Observation) -> list[int]:
        return self._encode(observation.text, special_tokens=True)

    def next(self, observation: Observation, last_token: int | None) -> list[int]:
        return self._encode(observation.text)

    def text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


def _messages(observation: Observation) -> list[dict[str, str]]:
    return observation.messages if observation.messages is not None else [{"role": "user", "content": observation.text}]


class ChatRenderer(PlainRenderer):
    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        prompt = self._render(_STAND_IN[:1], generation_prompt=True)
        self._user_turn = prompt[:prompt.index(_USER) + len(_USER)]  # the conversation before the model's turn

    @_refusals_as_render_errors
    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def first(self, observation: Observation) -> list[int]:
        return self._encode(self._render(_messages(observation), generation_prompt=True))

    def next(self, observation: Observation, last_token: int | None) -> list[int]:
        # Only the turns before the model's must render unchanged: a template may write the last
        # assistant message differently from earlier ones (Qwen3 gives it an empty think block).
        after = self._render(_STAND_IN + _messages(observation), generation_prompt=True)
        if not after.startswith(self._user_turn) or _ASSISTANT not in after:
            raise RenderError("the chat template re-renders earlier turns when a message is added; "
                              "its observations cannot be appended as a continuation")
        continuation = after[after.index(_ASSISTANT) + len(_ASSISTANT):]
        ended = self.tokenizer.decode([last_token]) if last_token is not None else ""
        if last_token in self.tokenizer.all_special_ids and ended and continuation.startswith(ended):
            continuation = continuation[len(ended):]  # the model sampled the end of its turn itself
        return self._encode(continuation)


def make_renderer(tokenizer) -> Renderer:
    """Chat rendering for tokenizers with a chat template, plain text otherwise."""
    return ChatRenderer(tokenizer) if getattr(tokenizer, "chat_template", None) else PlainRenderer(tokenizer)
