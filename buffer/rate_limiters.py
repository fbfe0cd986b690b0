"""Rate limiters with Reverb's rules, one per shard, enforced inside the shard's Lua scripts.

State per shard: counters inserts, samples, deletes (size = inserts - deletes).
  sample of k allowed  when size >= min_size_to_sample and inserts*spi - (samples + k) >= min_diff
  insert allowed       when size + 1 <= min_size_to_sample or (inserts + 1)*spi - samples <= max_diff
(the state after the operation, as Reverb's CanSample/CanInsert compute it).
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

UNBOUNDED = 1e300  # finite stand-in for +-inf: Lua's tonumber() does not parse "inf"


class LimiterParams(NamedTuple):
    samples_per_insert: float
    min_size_to_sample: int
    min_diff: float
    max_diff: float


class _Limiter(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MinSize(_Limiter):
    """Sampling waits until the shard holds `min_size` groups; inserts never block."""

    kind: Literal["min_size"] = "min_size"
    min_size: int = Field(1, ge=1)

    def params(self) -> LimiterParams:
        return LimiterParams(1.0, self.min_size, -UNBOUNDED, UNBOUNDED)


class SampleToInsertRatio(_Limiter):
    """Keep samples/inserts near `samples_per_insert`, within +-`error_buffer` samples."""

    kind: Literal["sample_to_insert_ratio"] = "sample_to_insert_ratio"
    samples_per_insert: float = Field(gt=0)
    min_size_to_sample: int = Field(ge=1)
    error_buffer: float = Field(gt=0)

    @model_validator(mode="after")
    def _no_deadlock(self) -> "SampleToInsertRatio":
        # Reverb's rule: a window narrower than 2*max(1, spi) can leave both inserts and
        # samples blocked (an insert moves the diff by spi, a sample by 1).
        needed = 2 * max(1.0, self.samples_per_insert)
        if 2 * self.error_buffer < needed:
            raise ValueError(f"error_buffer={self.error_buffer} can deadlock: the window 2*error_buffer must be "
                             f">= 2*max(1, samples_per_insert) = {needed}")
        return self

    def params(self) -> LimiterParams:
        offset = self.samples_per_insert * self.min_size_to_sample
        return LimiterParams(self.samples_per_insert, self.min_size_to_sample,
                             offset - self.error_buffer, offset + self.error_buffer)


class Queue(_Limiter):
    """Each group is sampled once, at most `size` groups wait (use with selector fifo, max_times_sampled 1)."""

    kind: Literal["queue"] = "queue"
    size: int = Field(ge=1)

    def params(self) -> LimiterParams:
        return LimiterParams(1.0, 1, 0.0, float(self.size))


RateLimiterConfig = Annotated[Union[MinSize, SampleToInsertRatio, Queue], Field(discriminator="kind")]
