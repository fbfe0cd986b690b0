"""The vLLM engine a rollout worker owns: batched sampling with per-token logprobs, in-place weight reload."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch

from actors.engine_config import EngineConfig


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # logprob of each sampled token under the weights that sampled it
    finish_reason: str  # "stop" | "length"


class VLLMEngine:
    """One in-process vLLM engine; not thread-safe, so its owner serialises calls."""

    def __init__(self, model_path: str, config: EngineConfig, seed: int = 0) -> None:
        # An in-process engine: a Ray actor already is the process boundary we want.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self._llm = LLM(
            model=model_path,
            dtype=config.dtype,
            enforce_eager=config.enforce_eager,
            gpu_memory_utilization=config.gpu_memory_utilization,
            kv_cache_memory_bytes=config.kv_cache_mb * 2**20,
            max_model_len=config.max_model_len,
            seed=seed,
        )
        self.max_model_len = config.max_model_len

    def generate(self, prompts: list[list[int]], *, max_tokens: list[int], temperature: float) -> list[Completion]:
        """One completion per prompt, in prompt order; temperature 0 is greedy."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(temperature=temperature, max_tokens=m, logprobs=0) for m in max_tokens]
        outputs = self._llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [_completion(out.outputs[0]) for out in outputs]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the weights in place (HF parameter names), keeping the KV cache and compiled state."""
        weights = list(named_tensors)

        def reload(worker, weights=weights):
            worker.model_runner.reload_weights(weights_iterator=iter(weights))

        self._llm.collective_rpc(reload)


def _completion(output) -> Completion:
    token_ids = list(output.token_ids)
    logprobs = [step[token].logprob for step, token in zip(output.logprobs, token_ids)]
    return Completion(token_ids=token_ids, logprobs=logprobs, finish_reason=output.finish_reason or "length")
