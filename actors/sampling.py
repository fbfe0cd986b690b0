"""Sampling settings of the rollout engines, in one place: training, evaluation and the benchmarks
use a `SamplingConfig`; the vLLM engine turns it into vLLM's SamplingParams here, the transformers
engine applies it itself (actors/hf_engine.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(1.0, ge=0)
    """0 is greedy. RL samples at 1 so that behaviour logprobs are the policy's own."""
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    """0 disables top-k."""
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    stop: list[str] = []
    """Stop strings (in addition to the tokenizer's EOS)."""
    max_new_tokens: int = Field(8, ge=1)
    """Per model turn; a turn also stops where the context reaches the episode's token budget."""

    def to_vllm(self, n: int, max_tokens: int):
        """vLLM SamplingParams for one request of `n` samples, final output only, with the
        logprob of every sampled token."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              min_p=self.min_p, repetition_penalty=self.repetition_penalty, stop=list(self.stop),
                              max_tokens=max_tokens, logprobs=0,
                              output_kind=RequestOutputKind.FINAL_ONLY)
