"""The inference engine a rollout worker drives, step by step.

`Engine` is what the episode loop needs: add requests, step, collect finished ones, swap weights
between steps. `VLLMEngine` implements it on vLLM's LLMEngine (add_request / step), so that new
requests join the running batch as others finish (continuous batching) instead of waiting for a
whole round. vLLM labels every sampled token with the weight version that was loaded when it was
generated, which is what lets weights change between steps while sequences are in flight
(partial rollouts): the tokens before and after the swap keep their own versions. `make_engine`
builds the engine `rollout.engine.kind` names: this one, or the transformers engine for tiny models
on CPU (actors/hf_engine.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from actors.engine_config import EngineConfig
from actors.sampling import SamplingConfig


@dataclass
class Sample:
    """One sampled completion of a request."""

    token_ids: list[int]
    logprobs: list[float]  # logprob of each sampled token under the weights that sampled it
    versions: list[int]  # policy version of the weights that sampled each token
    finish_reason: str  # "stop" (EOS or stop string) | "length" (max_tokens)


@dataclass
class Finished:
    request_id: str
    samples: list[Sample]  # n of them, in sample-index order


class Engine(Protocol):
    max_model_len: int
    version: int  # the policy version of the loaded weights

    def add(self, request_id: str, prompt_ids: list[int], sampling: SamplingConfig, max_tokens: int, n: int) -> None:
        """Queue a request for `n` samples continuing `prompt_ids` (the caller keeps prompt + max_tokens
        within max_model_len)."""

    def step(self) -> list[Finished]:
        """One scheduling step; returns the requests that finished in it."""

    def has_unfinished(self) -> bool: ...

    def abort(self, request_ids: list[str]) -> None: ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Replace the weights between steps; tokens sampled afterwards carry `version`."""


class VLLMEngine:
    """One in-process vLLM engine; only the thread that owns it may call it."""

    def __init__(self, model_path: str, config: EngineConfig, seed: int = 0) -> None:
        # An in-process engine: a Ray actor already is the process boundary we want.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self._llm = LLM(model=model_path, seed=seed, **config.engine_kwargs())
        self._engine = self._llm.llm_engine
        self.max_model_len = config.max_model_len
        self.version = 0
        self._engine.set_weight_version("0")

    def add(self, request_id: str, prompt_ids: list[int], sampling: SamplingConfig, max_tokens: int, n: int) -> None:
        from vllm.inputs import TokensPrompt

        self._engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(prompt_ids)),
                                 sampling.to_vllm(n, max_tokens))

    def step(self) -> list[Finished]:
        return [Finished(out.request_id, [_sample(c) for c in sorted(out.outputs, key=lambda c: c.index)])
                for out in self._engine.step() if out.finished]

    def has_unfinished(self) -> bool:
        return self._engine.has_unfinished_requests()

    def abort(self, request_ids: list[str]) -> None:
        self._engine.abort_request(list(request_ids))

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """In place (HF parameter names), keeping the KV cache and compiled state."""
        weights = list(named_tensors)

        def reload(worker, weights=weights):
            worker.model_runner.reload_weights(weights_iterator=iter(weights))

        self._llm.collective_rpc(reload)
        self.version = version
        self._engine.set_weight_version(str(version))


def make_engine(model_path: str, config: EngineConfig, seed: int = 0) -> Engine:
    """The engine `config.kind` names, loaded from the local HF folder `model_path`."""
    if config.kind == "transformers":
        from actors.hf_engine import TransformersEngine  # imports this module: a cycle at load time otherwise

        return TransformersEngine(model_path, config, seed=seed)
    return VLLMEngine(model_path, config, seed=seed)


def _sample(output) -> Sample:
    token_ids = list(output.token_ids)
    logprobs = [step[token].logprob for step, token in zip(output.logprobs, token_ids)]
    versions = [0] * len(token_ids)
    for span in output.weight_versions or []:
        versions[span.start:span.end] = [int(span.version)] * (span.end - span.start)
    return Sample(token_ids=token_ids, logprobs=logprobs, versions=versions,
                  finish_reason="stop" if output.finish_reason == "stop" else "length")
