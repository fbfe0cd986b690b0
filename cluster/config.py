"""The run configuration: YAML validated into typed models, one sub-config per component.

A bad key, type or path fails here, before any service starts, with the dotted key in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actors.config import EnvConfig, RolloutConfig
from envs import CurriculumConfig
from buffer import ReplayConfig
from buffer.weight_transport import WeightSyncConfig
from cluster.checkpoints import CheckpointConfig
from cluster.errors import ConfigError
from cluster.placement import PlacementConfig
from cluster.warm_start import DemoModelSettings
from learner.config import LearnerConfig, merge_nested
from learner.loss_config import PolicyLossConfig


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = None
    """A local Hugging Face folder (config, safetensors, tokenizer); None builds the demo model."""
    demo: DemoModelSettings = DemoModelSettings()
    """Used only when path is None: the built-in tiny model and its noisy supervised warm start."""

    @field_validator("path")
    @classmethod
    def _exists(cls, path: Path | None) -> Path | None:
        if path is not None and not (path / "config.json").is_file():
            raise ValueError(f"model path {path} does not exist or has no config.json")
        return path


class EvalEnvConfig(BaseModel):
    """One evaluation: an env (the training env's name and params by default) on the task source's
    held-out set, its measures reported as `eval_<measure><suffix>` (and `..._greedy`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: dict[str, Any] = {}
    suffix: str = ""


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    every: int = Field(20, ge=0)
    """Evaluate every this many learner steps (and before the first and after the last); 0 disables."""
    envs: list[EvalEnvConfig] = []
    """What to evaluate; empty: the training env. Games evaluate against fixed opponents, e.g.
    [{name: tictactoe, params: {opponent: random}}, {name: tictactoe, params: {opponent: heuristic},
    suffix: _heuristic}]."""
    greedy: bool = True
    """Also evaluate greedily (T=0) beside the sampled pass@1 (T=1); it doubles an evaluation's work."""
    kuhn_exploitability: bool = False
    """Also report the exact exploitability of the policy's Kuhn poker strategy (eval_exploitability)."""

    @model_validator(mode="after")
    def _distinct_suffixes(self) -> "EvalConfig":
        suffixes = [e.suffix for e in self.envs]
        if len(set(suffixes)) != len(suffixes):
            raise ValueError(f"eval.envs need distinct suffixes, got {suffixes}")
        return self


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    worker_restarts: int = Field(3, ge=0)
    """Restarts of one rollout worker slot within `worker_restart_window_s`; one more stops the run."""
    worker_restart_window_s: float = Field(600.0, gt=0)
    learner_restarts: int = Field(2, ge=0)
    """Times the learner ranks are restarted from the latest checkpoint after a rank died."""
    watchdog_s: float = Field(300.0, gt=0)
    """A learner step that does not complete within this stops the run, naming what stalled."""
    start_timeout_s: float = Field(600.0, gt=0)
    """Bound on starting the actors (engines warming up, DeepSpeed initialising)."""


class RayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = None
    """None starts a local Ray instance; otherwise the address of an existing cluster."""
    include_dashboard: bool = True
    num_cpus: int | None = 8
    """Logical CPUs of a local instance: more than the cores, since actors mostly wait on each other."""
    dashboard_host: str = "127.0.0.1"
    """Where a local instance's dashboard listens (0.0.0.0: every interface)."""
    metrics_export_port: int | None = Field(None, ge=1, le=65535)
    """A local instance's Prometheus endpoint (http://host:port/metrics); None: Ray picks a free port."""


# Where a run's replay differs from the service's own defaults (prioritized, groups redrawn
# without limit): the freshest groups, each trained on once. On the demo (2 cores) the async
# learner then needs about as few steps to 0.70 as sync's on-policy one (stop 23, bench async).
RUN_REPLAY_DEFAULTS = {"selector": "lifo", "max_times_sampled": 1}


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "demo"
    mode: Literal["async", "sync"] = "async"
    """async: workers generate while the learner trains (bounded staleness); sync: generate, train, publish, repeat."""
    steps: int = Field(200, ge=1)
    """Learner steps (optimizer updates) in the run."""
    seed: int = 0
    run_root: Path = Path("runs")
    """Where run dirs go; relative to the current dir, `~` expanded on the machine that runs the driver
    (so `tidal submit`'s default, ~/tidal-runs, is on the head node)."""
    model: ModelConfig = ModelConfig()
    env: EnvConfig = EnvConfig(inline_calls=True)
    """The demo's arithmetic is pure computation: its calls run inline (see EnvConfig.inline_calls)."""
    curriculum: CurriculumConfig = CurriculumConfig()
    """Which task category each new group draws; the same distribution for every worker."""
    rollout: RolloutConfig = RolloutConfig()
    replay: ReplayConfig = ReplayConfig(**RUN_REPLAY_DEFAULTS)
    """The service's settings, but by default the learner trains on the newest groups, each once
    (RUN_REPLAY_DEFAULTS): a given `replay` section keeps them unless it sets them itself."""
    learner: LearnerConfig = LearnerConfig()
    loss: PolicyLossConfig = PolicyLossConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    faults: FaultConfig = FaultConfig()
    weights: WeightSyncConfig = WeightSyncConfig()
    """How new weights reach the rollout engines: object_store | collective."""
    placement: PlacementConfig = PlacementConfig()
    """What each role asks Ray for (CPUs, GPUs, custom resources) and how the learner ranks spread."""
    ray: RayConfig = RayConfig()

    def eval_envs(self) -> list[tuple[EnvConfig, str]]:
        """(env, suffix) of every evaluation: the training env's task source, each eval env's env."""
        if not self.eval.envs:
            return [(self.env, "")]
        return [(self.env.model_copy(update={"name": e.name, "params": e.params}), e.suffix) for e in self.eval.envs]

    @field_validator("run_root")
    @classmethod
    def _expand_home(cls, run_root: Path) -> Path:
        return run_root.expanduser()

    @field_validator("replay", mode="before")
    @classmethod
    def _run_replay_defaults(cls, value):
        return RUN_REPLAY_DEFAULTS | value if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _eval_envs_build(self) -> "RunConfig":
        for env, _ in self.eval_envs():
            EnvConfig.model_validate(env.model_dump())  # a bad eval env fails when the config loads
        return self

    @model_validator(mode="after")
    def _rounds_fit_the_staleness_window(self) -> "RunConfig":
        window = (self.rollout.max_staleness + 1) * self.learner.groups_per_step
        if self.rollout.groups_in_flight > window:
            raise ValueError(f"rollout.groups_in_flight={self.rollout.groups_in_flight} exceeds the admission window "
                             f"(max_staleness + 1) * learner.groups_per_step = {window}: it could never be reached")
        return self

    @model_validator(mode="after")
    def _gpus_need_vllm(self) -> "RunConfig":
        """The transformers engine runs on CPU: GPUs given to it would sit idle."""
        if self.rollout.engine.kind == "vllm":
            return self
        if self.placement.tensor_parallel_size > 1:
            raise ValueError(f"placement.tensor_parallel_size={self.placement.tensor_parallel_size} needs "
                             f"rollout.engine.kind 'vllm' (it is {self.rollout.engine.kind!r})")
        if self.placement.rollout.num_gpus > 0:
            raise ValueError(f"placement.rollout.num_gpus={self.placement.rollout.num_gpus} needs rollout.engine.kind "
                             f"'vllm': the {self.rollout.engine.kind} engine runs on CPU")
        return self


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"]
        if item["type"] == "union_tag_not_found":  # e.g. --set loss.objective.eps_high=0.3 alone
            discriminator = item["ctx"]["discriminator"].strip("'")
            message = (f"set {key}.{discriminator} too: which kind it is decides its other settings, and a "
                       "section given in part does not start from the default one")
        lines.append(f"  {key}: {message}")
    return "invalid run config:\n" + "\n".join(lines)


def parse_overrides(assignments: list[str]) -> dict:
    """`["rollout.num_workers=4", "learner.optim.lr=1e-6"]` -> nested overrides; each value is read
    as YAML (numbers, booleans, lists, mappings), so it is typed as in a config file."""
    overrides: dict = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {assignment!r}: expected KEY.PATH=VALUE")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {assignment!r}: the value is not valid YAML: {e}") from e
        value = _number(value)
        *parents, leaf = key.split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {assignment!r}: {part!r} is also set to a value")
        node[leaf] = value
    return overrides


def _number(value):
    """YAML 1.1 reads `1e-6` (no dot) as a string: on a command line it is meant as a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_run_config(run_dir: Path, path: Path | None, overrides: dict) -> RunConfig:
    """The config a resumed run goes on with: the one it saved when it started (RUN_DIR/config.yaml,
    every setting written out, --set ones included), with `overrides` on top (a deliberate change,
    such as more steps). A config file given as well must come to the same settings: resuming a
    checkpoint under another model, loss or learning rate by mistake would train on silently."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    saved = load_config(saved_path, overrides)
    if path is not None:
        changed = _changed_settings(saved, load_config(path, overrides))
        if changed:
            raise ConfigError(f"--resume {run_dir}: {path} differs from the run's own config in "
                              f"{'; '.join(changed)}. Resume without a config file to go on with the run's "
                              "settings, and --set KEY=VALUE for a change you mean")
    return saved


def _changed_settings(run: RunConfig, given: RunConfig) -> list[str]:
    """'key: run's value -> given value' for each setting that differs, keys dotted."""
    def flat(data: object, prefix: str = "") -> dict[str, object]:
        if not isinstance(data, dict):
            return {prefix: data}
        return {key: value for name, item in data.items() for key, value in flat(item, f"{prefix}{name}.").items()}

    before, after = (flat(c.model_dump(mode="json", exclude={"replay": {"password"}})) for c in (run, given))
    return [f"{key.rstrip('.')}: {before.get(key)!r} -> {after.get(key)!r}"
            for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]


def load_config(path: Path | None, overrides: dict | None = None) -> RunConfig:
    """Read YAML (or use the defaults when path is None) and validate it."""
    data: dict = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    data = merge_nested(data, overrides or {})
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from e
