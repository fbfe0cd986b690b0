"""Settings of one rollout inference engine."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: str = "float32"
    """Weights and activations dtype; float32 on CPU so logprobs match the learner's."""
    kv_cache_mb: int = Field(256, gt=0)
    """Explicit KV-cache size: without it a second engine on the same machine fails vLLM's memory check."""
    gpu_memory_utilization: float = Field(0.2, gt=0, le=1)
    """On CPU this reserves a fraction of RAM; vLLM's default of 0.92 fails there."""
    max_model_len: int = Field(64, gt=0)
    enforce_eager: bool = True
    """CUDA graphs and torch.compile cost more start-up than they save for small models."""
