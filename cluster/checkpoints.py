"""When the run checkpoints, and what the driver keeps in a checkpoint besides the learner's state.

A checkpoint is taken every `every_steps` learner steps and every `every_s` seconds, whichever
comes first, and at the end, on preemption (SIGTERM / SIGINT) and before nothing else: so that
`--resume` and the recovery from a dead learner rank always have one to start from. The learner
ranks save the DeepSpeed state (model, optimizer, schedule); the driver's part (its step, the
curriculum) rides along as the checkpoint's client state.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field


class CheckpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    every_steps: int = Field(50, ge=0)
    """Checkpoint after every this many learner steps (0: not by steps)."""
    every_s: float = Field(120.0, ge=0)
    """... and when this many seconds passed since the last one (0: not by time)."""
    keep: int = Field(2, ge=1)
    """Checkpoints kept on disk; older ones are deleted after a newer one is saved."""
    timeout_s: float = Field(300.0, gt=0)
    """Bound on one save (the final one on preemption included)."""


class CheckpointPolicy:
    def __init__(self, config: CheckpointConfig, now: float | None = None) -> None:
        self.config = config
        self.last_step = 0
        self.last_time = time.monotonic() if now is None else now

    def due(self, step: int, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        by_steps = self.config.every_steps and step - self.last_step >= self.config.every_steps
        by_time = self.config.every_s and now - self.last_time >= self.config.every_s
        return bool(by_steps or by_time)

    def saved(self, step: int, now: float | None = None) -> None:
        self.last_step = step
        self.last_time = time.monotonic() if now is None else now
