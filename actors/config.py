"""Settings of the rollout side: environment, sampling, episode limits, workers and admission."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from actors.engine_config import EngineConfig
from actors.episode import EpisodeLimits
from actors.sampling import SamplingConfig


def _under(field: str, error: dict) -> str:
    """One error of a nested settings model, its location under `field` (a whole-model check has none)."""
    where = ".".join([field, *map(str, error["loc"])])
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


class EnvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "arithmetic"
    """A registered environment (envs.ENVS)."""
    params: dict[str, Any] = {}
    """Keyword arguments of the environment's constructor."""
    task_source: str = "arithmetic"
    """A registered task source (envs.TASK_SOURCES)."""
    task_params: dict[str, Any] = {}
    inline_calls: bool = False
    """Call reset and step on the engine's thread instead of the env-call threads: for envs that
    are pure computation (microseconds a call), where a thread hand-off costs more than the call.
    An inline call has no wall-clock limit (step_timeout_s), so leave it off for tools, sandboxes
    and slow reward code. The built-in demo turns it on; an env section you write has it off."""

    @model_validator(mode="after")
    def _buildable(self) -> "EnvConfig":
        # Built once here, so that a bad name, parameter, file or column fails when the config
        # loads, not inside a rollout worker.
        for field, build in (("task_params", self.build_task_source), ("params", self.build_env)):
            try:
                build()
            except ValidationError as e:  # a component's own settings model: its keys sit under `field`
                raise ValueError("; ".join(_under(field, error) for error in e.errors())) from None
        return self

    def build_task_source(self):
        from envs import make_task_source

        return make_task_source(self.task_source, **self.task_params)

    def build_env(self):
        from envs import make_env

        return make_env(self.name, **self.params)


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_workers: int = Field(2, ge=1)
    group_size: int = Field(8, ge=2)
    """G: episodes per task; GRPO needs at least 2 to have a baseline."""
    groups_in_flight: int = Field(16, ge=1)
    """Groups each worker keeps generating at once; a new one starts as soon as one is inserted.
    vLLM's per-step scheduling is amortised over the batch: on the demo 16 made a step 1.2-1.5x
    faster than 8 (3 pairs). The transformers engine on two cores did better at 8 (2 pairs):
    its static batches only add staleness and groups that go stale unused."""
    sampling: SamplingConfig = SamplingConfig()
    limits: EpisodeLimits = EpisodeLimits()
    max_staleness: int = Field(4, ge=0)
    """Admission control: groups are produced at most this many learner versions ahead of use."""
    partial: bool = False
    """Partial rollouts: new weights are loaded between engine steps while sequences are in flight
    (their later tokens carry the new version). False: new requests wait until the engine drains."""
    engine: EngineConfig = EngineConfig()
    nice: int = Field(10, ge=0, le=19)
    """How many steps of Unix niceness the worker processes run below the one Ray started them at
    (which the learner keeps; at most 19 in all). Where workers share CPU cores with the learner
    (the demo, a laptop, CI), the learner's update is the critical path of async training: 10 steps
    below it the kernel runs it first and the workers fill the time it leaves. It changes nothing
    where each role has cores of its own. 0: workers and learner share equally."""

    @model_validator(mode="after")
    def _sampling_fits_the_engine(self) -> "RolloutConfig":
        if self.engine.kind == "transformers" and self.sampling.repetition_penalty != 1.0:
            raise ValueError("sampling.repetition_penalty needs engine.kind 'vllm': the transformers engine does not "
                             "apply it")
        return self
