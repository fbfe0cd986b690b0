"""Settings of the rollout side: environment, sampling, workers and admission control."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.engine_config import EngineConfig


class EnvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "arithmetic"
    """A registered environment (envs.ENVS)."""
    params: dict[str, Any] = {}
    """Keyword arguments of the environment's constructor."""
    task_source: str = "arithmetic"
    task_params: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _known_env(cls, name: str) -> str:
        from envs import ENVS

        return ENVS.check(name)


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_workers: int = Field(2, ge=1)
    group_size: int = Field(8, ge=2)
    """G: completions per task; GRPO needs at least 2 to have a baseline."""
    groups_per_round: int = Field(8, ge=1)
    """Tasks a worker generates for in one batched engine call before it checks for new weights."""
    max_new_tokens: int = Field(8, ge=1)
    """Per turn; a sequence that reaches the engine's max_model_len ends with finish_reason 'length'."""
    max_turns: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_staleness: int = Field(4, ge=0)
    """Admission control: groups are produced at most this many learner versions ahead of use."""
    cpus_per_worker: float = Field(1.0, gt=0)
    engine: EngineConfig = EngineConfig()
