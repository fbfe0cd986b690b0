"""ReplayConfig: everything the replay service needs, validated at construction."""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import parse_qs, urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from buffer.rate_limiters import MinSize, Queue, RateLimiterConfig
from buffer.removers import REMOVERS
from buffer.selectors import SELECTORS

PASSWORD_ENV = "TIDAL_REDIS_PASSWORD"


def _password_from_env() -> SecretStr | None:
    value = os.environ.get(PASSWORD_ENV)
    return SecretStr(value) if value else None


class SuccessStoreConfig(BaseModel):
    """ARPO's per-task store of successful rollouts, injected into all-failed groups."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    per_task: int = Field(8, ge=1)  # K successes kept per task, FIFO
    success_reward: float = 0.1  # a rollout with reward > this is a success
    failed_std: float = Field(0.05, ge=0)  # a group with reward std < this ...
    failed_mean: float = 0.2  # ... and mean < this is all-failed


class ReplayConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    shard_urls: list[str] = Field(default_factory=list)  # empty: the run starts num_shards local servers
    num_shards: int = Field(2, ge=1)
    namespace: str = Field("tidal", pattern=r"^[A-Za-z0-9_.\-]+$")  # one per run: keys are "<namespace>:..."
    capacity_per_shard: int = Field(10_000, ge=1)
    selector: str = "prioritized"
    alpha: float = Field(0.6, ge=0)  # P ~ p^alpha; 0 = uniform over groups with p > 0
    beta: float = Field(0.4, ge=0)  # importance-weight exponent at learner version 0
    beta_final: float = Field(1.0, ge=0)
    beta_anneal_versions: int = Field(0, ge=0)  # 0: beta stays constant
    remover: str = "fifo"
    max_times_sampled: int = Field(0, ge=0)  # 0 = unlimited
    max_staleness: int = Field(4, ge=0)  # in policy versions behind the learner
    initial_priority: Literal["learning_signal", "producer"] = "learning_signal"
    rate_limiter: RateLimiterConfig = Field(default_factory=MinSize)
    insert_timeout_s: float | None = Field(60.0, gt=0)  # None: wait forever
    sample_timeout_s: float | None = Field(60.0, gt=0)
    fsync: Literal["everysec", "always", "no"] = "everysec"
    password: SecretStr | None = Field(default_factory=_password_from_env)
    dedup_ttl_s: int = Field(86_400, ge=1)  # a retried insert within this window is a duplicate
    retry_down_shard_s: float = Field(1.0, gt=0)  # how often a down shard is tried again
    success_store: SuccessStoreConfig = Field(default_factory=SuccessStoreConfig)

    @field_validator("shard_urls")
    @classmethod
    def _no_password_in_urls(cls, urls: list[str]) -> list[str]:
        """URLs are printed and written to the run directory; the password field never is."""
        for index, url in enumerate(urls):
            parsed = urlparse(url)
            if parsed.password or "password" in parse_qs(parsed.query):
                raise ValueError(f"shard_urls[{index}] ({parsed.hostname}:{parsed.port}) holds a password: "
                                 f"take it out and set replay.password or {PASSWORD_ENV} instead")
        return urls

    @field_validator("selector")
    @classmethod
    def _known_selector(cls, name: str) -> str:
        return SELECTORS.check(name)

    @field_validator("remover")
    @classmethod
    def _known_remover(cls, name: str) -> str:
        return REMOVERS.check(name)

    @model_validator(mode="after")
    def _consistent(self) -> "ReplayConfig":
        min_size = self.rate_limiter.params().min_size_to_sample
        if min_size > self.capacity_per_shard:
            raise ValueError(f"rate_limiter min size {min_size} > capacity_per_shard {self.capacity_per_shard}: "
                             "sampling could never start")
        if isinstance(self.rate_limiter, Queue) and self.rate_limiter.size > self.capacity_per_shard:
            raise ValueError(f"rate_limiter queue size {self.rate_limiter.size} > capacity_per_shard "
                             f"{self.capacity_per_shard}: the remover would drop unread groups")
        return self
