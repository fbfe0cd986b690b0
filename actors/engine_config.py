"""Settings of one rollout inference engine: which engine, the settings Tidal sets itself, and any
other vLLM engine argument passed through (checked against vLLM's own EngineArgs fields when the
config loads)."""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


@cache
def vllm_engine_argument_names() -> frozenset[str]:
    from vllm.engine.arg_utils import EngineArgs

    return frozenset(f.name for f in dataclasses.fields(EngineArgs))


TRANSFORMERS_DTYPES = ("auto", "float32", "float16", "bfloat16")


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["vllm", "transformers"] = "vllm"
    """vllm: continuous batching, any model size, GPUs and tensor parallelism. transformers: a
    static-batch engine on plain transformers (actors/hf_engine.py) for models of a few million
    parameters on CPU (it never moves the model to a GPU), where vLLM's per-step scheduling costs
    more than the forward pass. The KV-cache, memory and eager settings below are vLLM's only."""
    dtype: str = "float32"
    """Weights and activations dtype; float32 on CPU so logprobs match the learner's."""
    kv_cache_mb: int = Field(256, gt=0)
    """Explicit KV-cache size: without it a second engine on the same machine fails vLLM's memory check."""
    gpu_memory_utilization: float = Field(0.2, gt=0, le=1)
    """On CPU this reserves a fraction of RAM; vLLM's default of 0.92 fails there."""
    max_model_len: int = Field(64, gt=0)
    enforce_eager: bool = True
    """CUDA graphs and torch.compile cost more start-up than they save for small models."""
    vllm: dict[str, Any] = {}
    """Any other vllm.EngineArgs field, passed through as is (e.g. max_num_seqs, enable_prefix_caching)."""

    @model_validator(mode="after")
    def _engine_arguments_fit_the_kind(self) -> "EngineConfig":
        """The kind first: a transformers engine must not need vLLM installed to be refused."""
        if self.kind == "transformers":
            if self.vllm:
                raise ValueError(f"vllm engine arguments {sorted(self.vllm)} are set but kind is 'transformers'")
            if self.dtype not in TRANSFORMERS_DTYPES:
                raise ValueError(f"dtype {self.dtype!r} is not one the transformers engine loads: {TRANSFORMERS_DTYPES}")
            return self
        if not self.vllm:
            return self
        ours = set(type(self).model_fields) - {"vllm"} | {"model", "seed", "kv_cache_memory_bytes"}
        taken = sorted(set(self.vllm) & ours)
        if taken:
            raise ValueError(f"{taken} are set by Tidal: use rollout.engine's own fields (or the model/seed settings)")
        unknown = sorted(set(self.vllm) - vllm_engine_argument_names())
        if unknown:
            raise ValueError(f"unknown vLLM engine arguments {unknown} (not fields of vllm.EngineArgs)")
        return self

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of vllm.LLM besides model and seed."""
        return {"dtype": self.dtype, "enforce_eager": self.enforce_eager,
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "kv_cache_memory_bytes": self.kv_cache_mb * 2**20, "max_model_len": self.max_model_len, **self.vllm}
