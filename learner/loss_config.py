"""Typed configuration of the policy loss: one small frozen model per component.

Each component (objective, correction, KL, Clip-Cov, KL-Cov, self-imitation) is handed
only its own sub-config. Components that are off by default are `None`, never a boolean
beside their parameters. Formulas and defaults: /work/shared/ALGORITHMS.md.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

AggregationMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "k2", "k3"]
CorrectionMode = Literal["none", "tis", "decoupled"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PPOClipConfig(_Frozen):
    """PPO-clip with separate lower/upper bounds (DAPO clip-higher) and optional dual clip."""

    name: Literal["ppo_clip"] = "ppo_clip"
    eps_low: float = Field(0.2, gt=0, lt=1)  # c_low = 1 - eps_low
    eps_high: float = Field(0.28, gt=0)  # c_high = 1 + eps_high
    dual_clip: float | None = Field(3.0, gt=1)  # c_dual for A < 0 (verl's default 3); None turns it off
    default_aggregation: ClassVar[AggregationMode] = "token-mean"

    def fixed_bounds(self) -> tuple[float, float]:
        return 1.0 - self.eps_low, 1.0 + self.eps_high


class BAPOConfig(_Frozen):
    """BAPO adaptive clipping: PPO-clip whose bounds are chosen per update batch (paper defaults)."""

    name: Literal["bapo"] = "bapo"
    rho0: float = Field(0.4, gt=0, le=1)  # target share of the gradient mass carried by A > 0 tokens
    a_minus: float = Field(0.6, gt=0, le=1)  # first c_low
    b_minus: float = Field(0.9, gt=0, le=1)  # largest c_low
    a_plus: float = Field(1.2, ge=1)  # first c_high
    b_plus: float = Field(3.0, ge=1)  # largest c_high
    d1: float = Field(0.05, gt=0)  # c_high step
    d2: float = Field(0.02, gt=0)  # c_low step
    dual_clip: float | None = Field(3.0, gt=1)
    default_aggregation: ClassVar[AggregationMode] = "token-mean"

    @model_validator(mode="after")
    def _ranges_ordered(self) -> BAPOConfig:
        if self.a_minus > self.b_minus:
            raise ValueError(f"a_minus={self.a_minus} must be <= b_minus={self.b_minus}")
        if self.a_plus > self.b_plus:
            raise ValueError(f"a_plus={self.a_plus} must be <= b_plus={self.b_plus}")
        return self

    def fixed_bounds(self) -> tuple[float, float]:
        return self.a_minus, self.a_plus


class GSPOConfig(_Frozen):
    """GSPO: clipping of the sequence-level (length-normalised) ratio."""

    name: Literal["gspo"] = "gspo"
    eps_low: float = Field(3e-4, gt=0, lt=1)
    eps_high: float = Field(4e-4, gt=0)
    default_aggregation: ClassVar[AggregationMode] = "seq-mean-token-mean"

    def fixed_bounds(self) -> tuple[float, float]:
        return 1.0 - self.eps_low, 1.0 + self.eps_high


class CISPOConfig(_Frozen):
    """CISPO: REINFORCE with a truncated, stop-gradient importance weight (no lower clip)."""

    name: Literal["cispo"] = "cispo"
    eps_high: float = Field(0.2, gt=0)
    default_aggregation: ClassVar[AggregationMode] = "token-mean"

    def fixed_bounds(self) -> tuple[float, float]:
        return 0.0, 1.0 + self.eps_high


ObjectiveConfig = Annotated[Union[PPOClipConfig, BAPOConfig, GSPOConfig, CISPOConfig], Field(discriminator="name")]


class CorrectionConfig(_Frozen):
    """Off-policy correction. none: ratio against behaviour logprobs. tis: also multiply the
    per-token loss by the truncated weight sg(min(pi_prox / pi_beh, cap)). decoupled (AReaL):
    ratio against proximal logprobs, times the same truncated behaviour weight."""

    mode: CorrectionMode = "none"
    cap: float = Field(2.0, gt=0)  # C


class KLConfig(_Frozen):
    coef: float = Field(0.0, ge=0)  # the trainer loads a reference model only when > 0
    estimator: KLEstimator = "k3"


class ClipCovConfig(_Frozen):
    fraction: float = Field(2e-4, gt=0, le=1)  # of the masked tokens whose gradient is stopped
    cov_low: float = 1.0  # only tokens with cov_low < Cov < cov_high are candidates
    cov_high: float = 5.0

    @model_validator(mode="after")
    def _window_ordered(self) -> ClipCovConfig:
        if self.cov_low >= self.cov_high:
            raise ValueError(f"cov_low={self.cov_low} must be < cov_high={self.cov_high}")
        return self


class KLCovConfig(_Frozen):
    fraction: float = Field(2e-4, gt=0, le=1)  # of the masked tokens, those with the largest Cov
    coef: float = Field(1.0, ge=0)  # beta


class PolicyLossConfig(_Frozen):
    objective: ObjectiveConfig = PPOClipConfig()
    aggregation: AggregationMode | None = None  # None: the objective's own default
    correction: CorrectionConfig = CorrectionConfig()
    kl: KLConfig = KLConfig()
    entropy_coef: float = Field(0.0, ge=0)  # beta_H of the entropy bonus
    clip_cov: ClipCovConfig | None = None
    kl_cov: KLCovConfig | None = None

    @model_validator(mode="after")
    def _bapo_has_a_ratio_to_adapt_to(self) -> PolicyLossConfig:
        if isinstance(self.objective, BAPOConfig) and self.correction.mode == "decoupled":
            raise ValueError("BAPO adapts its clipping bounds to the ratio the objective clips; with correction.mode "
                             "'decoupled' that is pi / pi_prox, which is 1 on the one update each batch gets: "
                             "use correction.mode 'tis' (staleness then enters through the truncated weight) or 'none'")
        return self

    @property
    def aggregation_mode(self) -> AggregationMode:
        return self.aggregation or self.objective.default_aggregation

    @property
    def needs_reference(self) -> bool:
        return self.kl.coef > 0

    @property
    def needs_ratios_before_update(self) -> bool:
        """BAPO picks its bounds from the whole batch's ratios before the first micro-batch's loss;
        every other objective needs nothing the forward with graph does not give."""
        return isinstance(self.objective, BAPOConfig)


class SelfImitationConfig(_Frozen):
    """SPEAR self-imitation on replayed positive-advantage trajectories (off unless configured)."""

    coef: float = Field(1.0, gt=0)  # final weight of the replay loss
    warmup_steps: int = Field(200, ge=0)  # cosine ramp of the weight from 0 to coef
    capacity: int = Field(2048, ge=1)
    max_staleness: int = Field(10, ge=0)  # entries older than this many policy versions are dropped
    baseline_groups: int = Field(10_240, ge=1)  # recent group-mean rewards whose median is the baseline
    clip: PPOClipConfig = PPOClipConfig()
    clip_cov: ClipCovConfig | None = ClipCovConfig()

    def policy_loss_config(self) -> PolicyLossConfig:
        return PolicyLossConfig(objective=self.clip, clip_cov=self.clip_cov)
