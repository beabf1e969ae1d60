"""The experiment spec: frozen, documented pydantic models.

A spec is what a user writes in YAML. After ``gymflow.config`` resolves it (globals,
overrides, ``${var}`` substitution, trial id), the same model is what the worker
reads from ``spec.json`` and what MLflow records.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gymflow import algorithms, hyperparams

ENTRY_POINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
DEFAULT_STORAGE = "./runs/${experiment}/${trial_id}"
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(value: str | int | float) -> float:
    """Seconds from 3600, "90s", "30m", "6h" or "2d"; ValueError for anything else."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION.fullmatch(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration: give seconds, or a number with s, m, h or d (e.g. 6h)")
    return float(match[1]) * _DURATION_UNITS[match[2]]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`seed: true` is a mistake, not 1: pydantic's lax mode would read a boolean as a number."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation in _NUMBERS:
                raise PydanticCustomError("bool_for_number", "must be a number, got {value}", {"value": str(value).lower()})
        return value


_NUMBERS = (int, float, int | None, float | None)


class WrapperSpec(_Model):
    """A gymnasium wrapper applied to every env, innermost first."""

    path: str = Field(description="Import path of the wrapper class, 'package.module:Class'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the wrapper.")

    @model_validator(mode="before")
    @classmethod
    def _accept_short_forms(cls, value: Any) -> Any:
        # "pkg.mod:Class" or the zoo's {"pkg.mod:Class": {kwargs}}.
        if isinstance(value, str):
            return {"path": value}
        if isinstance(value, dict) and len(value) == 1 and "path" not in value:
            ((path, kwargs),) = value.items()
            return {"path": path, "kwargs": kwargs or {}}
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not ENTRY_POINT_RE.match(value):
            raise PydanticCustomError("entry_point", "{msg}", {"msg": f"expected 'package.module:Class', got {value!r}"})
        return value


class NormalizeSpec(_Model):
    """VecNormalize options: running normalisation of observations and rewards."""

    norm_obs: bool = Field(True, description="Normalise observations.")
    norm_reward: bool = Field(True, description="Normalise rewards (training only; evaluation sees raw rewards).")
    clip_obs: float = Field(10.0, gt=0, description="Clip normalised observations to [-clip_obs, clip_obs].")
    clip_reward: float = Field(10.0, gt=0, description="Clip normalised rewards to [-clip_reward, clip_reward].")
    gamma: float | None = Field(None, gt=0, le=1, description="Discount for reward normalisation; default: the algorithm's gamma.")
    epsilon: float = Field(1e-8, gt=0, description="Added to variances to avoid division by zero.")


class UniformRange(_Model):
    """A reset option drawn uniformly from [min, max] at each episode."""

    min: float = Field(description="Lower bound (inclusive).")
    max: float = Field(description="Upper bound (inclusive); must be >= min.")

    @model_validator(mode="after")
    def _ordered(self) -> UniformRange:
        if self.min > self.max:
            raise PydanticCustomError("range", "min ({lo}) is greater than max ({hi}); swap them", {"lo": self.min, "hi": self.max})
        return self


class Choice(_Model):
    """A reset option drawn uniformly from a list of values at each episode."""

    values: list[Any] = Field(min_length=1, description="The values to draw from (at least one).")


def _scenario_kind(value: Any) -> str:
    if isinstance(value, dict) and "values" in value:
        return "choice"
    if isinstance(value, Choice):
        return "choice"
    return "range"


ScenarioParam = Annotated[
    Union[Annotated[UniformRange, Tag("range")], Annotated[Choice, Tag("choice")]],
    Discriminator(_scenario_kind),
]


class EnvSpec(_Model):
    """The environment: what to simulate and how to vectorise it."""

    id: str = Field(min_length=1, description="A gymnasium id (CartPole-v1) or an entry point 'package.module:Class'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for gymnasium.make / the env class.")
    n_envs: int = Field(1, ge=1, le=4096, description="Number of parallel envs used for training.")
    vectorization: Literal["dummy", "subprocess"] = Field("dummy", description="dummy: envs in the worker process; subprocess: one process per env.")
    max_episode_steps: int | None = Field(None, ge=1, description="Truncate episodes after this many steps (default: the env's own limit).")
    wrappers: tuple[WrapperSpec, ...] = Field((), description="Gymnasium wrappers, applied in order.")
    normalize: NormalizeSpec | None = Field(None, description="VecNormalize options; true for the defaults, omit for none.")
    frame_stack: int | None = Field(None, ge=1, description="Stack this many consecutive observations (VecFrameStack).")
    scenario: dict[str, ScenarioParam] = Field(
        default_factory=dict,
        description="Per-episode randomisation: each named reset option drawn from {min, max} or {values: [...]}.",
    )

    @field_validator("normalize", mode="before")
    @classmethod
    def _normalize_forms(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        if isinstance(value, str):
            try:
                return hyperparams.parse_mapping(value)
            except hyperparams.HyperparamError as exc:
                raise PydanticCustomError("normalize", "{msg}", {"msg": str(exc)}) from None
        return value


class AlgorithmSpec(_Model):
    """The learning algorithm and its hyperparameters."""

    name: str = Field(description="ppo, a2c, dqn, sac, td3, ddpg, tqc, qrdqn, trpo, recurrentppo or ars.")
    policy: str | None = Field(None, description="Policy name (MlpPolicy, CnnPolicy, MultiInputPolicy, ...); default: the algorithm's MLP policy.")
    hyperparams: dict[str, Any] = Field(
        default_factory=dict,
        description="Constructor arguments of the algorithm, in rl-zoo formats (lin_<x> schedules, policy_kwargs mapping, noise_type/noise_std).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the faster one for the policy (cuda, when "
                                                   "present, for convolutional and wide off-policy MLPs; else cpu); "
                                                   "cuda fails where there is none.")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        canonical = algorithms.canonical_name(value)
        if canonical is None:
            from difflib import get_close_matches

            close = get_close_matches(value.lower(), list(algorithms.ALGORITHMS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise PydanticCustomError(
                "algorithm",
                "{msg}",
                {"msg": f"unknown algorithm {value!r}.{hint} Known: {', '.join(algorithms.ALGORITHMS)}"},
            )
        return canonical

    @model_validator(mode="after")
    def _parse_values(self) -> AlgorithmSpec:
        info = algorithms.get(self.name)
        parsed, errors = hyperparams.parse_hyperparams(self.hyperparams, info.schedule_keys)
        if errors:
            key, message = next(iter(errors.items()))
            raise PydanticCustomError("hyperparam", "hyperparams.{key}: {message}", {"key": key, "message": message})
        object.__setattr__(self, "hyperparams", parsed)
        return self

    @property
    def info(self) -> algorithms.AlgorithmInfo:
        return algorithms.get(self.name)

    @property
    def policy_name(self) -> str:
        return self.policy or self.info.default_policy


class BudgetSpec(_Model):
    """How much to train: timesteps or episodes, exactly one."""

    timesteps: int | None = Field(
        None, ge=1,
        description="Environment steps in total, summed over the parallel envs (ARS stops at the end of the iteration that passes it).",
    )
    episodes: int | None = Field(None, ge=1, description="Finished episodes in total, counted across the parallel envs.")

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetSpec:
        if (self.timesteps is None) == (self.episodes is None):
            which = "both are set" if self.timesteps is not None else "neither is set"
            raise PydanticCustomError("budget", "give exactly one of timesteps or episodes ({which})", {"which": which})
        return self


class EarlyStoppingSpec(_Model):
    """Stop training early on evaluation results."""

    patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement.")
    min_delta: float = Field(0.0, ge=0, description="An improvement must exceed the best mean reward by more than this.")
    reward_threshold: float | None = Field(None, description="Stop once the mean evaluation reward reaches this value.")

    @model_validator(mode="after")
    def _something(self) -> EarlyStoppingSpec:
        if self.patience is None and self.reward_threshold is None:
            raise PydanticCustomError("early_stopping", "set patience, reward_threshold or both (or remove early_stopping)", {})
        return self


class EvaluationSpec(_Model):
    """Evaluation on a separate env: periodic during training and once at the end."""

    every_timesteps: int | None = Field(10_000, ge=1, description="Evaluate every this many timesteps; null for only the final evaluation.")
    episodes: int = Field(10, ge=1, description="Episodes per evaluation.")
    deterministic: bool = Field(True, description="Act deterministically during evaluation.")
    keep_best: bool = Field(True, description="Keep the best periodically evaluated model as the final model.")
    early_stopping: EarlyStoppingSpec | None = Field(None, description="Stop training early by patience and/or reward threshold.")


class CheckpointSpec(_Model):
    """Periodic checkpoints; a rerun of the same trial resumes from the newest."""

    every_timesteps: int = Field(10_000, ge=1, description="Save a checkpoint every this many timesteps.")
    keep: int = Field(2, ge=1, description="How many of the newest checkpoints to keep.")
    replay_buffer: bool = Field(False, description="Also save the replay buffer (off-policy algorithms; can be large).")


class TrackingSpec(_Model):
    """Where MLflow records the trial."""

    uri: str | None = Field(None, description="MLflow tracking URI; default: MLFLOW_TRACKING_URI or MLflow's local default.")
    experiment: str | None = Field(None, min_length=1, max_length=250, description="MLflow experiment name; default: the spec's name.")


class LocalBackendSpec(_Model):
    """Run the worker as a subprocess on this machine."""

    kind: Literal["local"] = Field("local", description="local: a subprocess on this machine.")
    heartbeat_timeout_s: float = Field(120.0, gt=0, description="Fail the trial when the worker's heartbeat has not "
                                       "advanced for this long (measured on the orchestrator's clock).")
    startup_grace_s: float = Field(120.0, gt=0, description="How long a launched worker may take to write its first "
                                   "status before it is presumed lost.")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads torch may use in the worker; default: all "
                                      "cores. A sweep sets cores / trials at once, so parallel trials do not oversubscribe the CPU.")
    warm_evaluate_s: float = Field(60.0, ge=0, description="After training, the worker waits up to this long to run the "
                                   "evaluate phase itself, sparing a second start-up (Python, torch, SB3); 0: a fresh worker evaluates.")
    reuse_workers_s: float | None = Field(None, ge=0, description="After evaluating, the worker waits up to this long to be "
                                          "handed the next trial of the same orchestrator process, sparing that trial a start-up; "
                                          "default: 30 in a sweep, 0 for a single trial. 0: every trial starts its own worker.")


class PluginBackendSpec(BaseModel):
    """A backend from a plugin: its kind is an entry-point name or 'package.module:Class'; the
    backend's own settings model checks the other fields."""

    model_config = ConfigDict(frozen=True, extra="allow")

    kind: str = Field(min_length=1, description="A registered backend name (gymflow backends) or 'package.module:Class'.")


def _backend_kind(value: Any) -> str:
    kind = value.get("kind", "local") if isinstance(value, dict) else getattr(value, "kind", "local")
    return "local" if kind == "local" else "plugin"


BackendSpec = Annotated[
    Union[Annotated[LocalBackendSpec, Tag("local")], Annotated[PluginBackendSpec, Tag("plugin")]],
    Discriminator(_backend_kind),
]

class Distribution(_Model):
    """A sampled value: uniform/loguniform in [low, high), int in [low, high], or a choice of values."""

    distribution: Literal["uniform", "loguniform", "int", "choice"] = Field(description="How to draw the value.")
    low: float | None = Field(None, description="Lower bound (uniform, loguniform > 0, int).")
    high: float | None = Field(None, description="Upper bound, greater than low.")
    values: list[Any] | None = Field(None, min_length=1, description="The values for choice.")

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        if self.distribution == "choice":
            if not self.values:
                raise PydanticCustomError("distribution", "choice needs values: [...]", {})
            return self
        if self.low is None or self.high is None:
            raise PydanticCustomError("distribution", "{msg}", {"msg": f"{self.distribution} needs low and high"})
        if self.low >= self.high:
            raise PydanticCustomError("distribution", "{msg}", {"msg": f"low ({self.low:g}) must be less than high ({self.high:g})"})
        if self.distribution == "loguniform" and self.low <= 0:
            raise PydanticCustomError("distribution", "{msg}", {"msg": f"loguniform needs low > 0, got {self.low:g}"})
        return self


class RandomSearch(_Model):
    """n random configurations, drawn reproducibly."""

    n: int = Field(ge=1, le=10_000, description="Number of sampled configurations.")
    seed: int = Field(0, ge=0, description="Seed of the sampler (not of the trials).")
    params: dict[str, Distribution] = Field(min_length=1, description="Dotted spec path -> distribution.")


class SweepSpec(_Model):
    """Many trials of one spec: grid x random samples x seeds, run in parallel on Dask."""

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Dotted spec path -> values; every combination runs.")
    random: RandomSearch | None = Field(None, description="Random search, crossed with the grid.")
    seeds: list[int] = Field(default_factory=list, description="Seeds, crossed with the rest (default: the spec's seed).")
    max_parallel: int | None = Field(None, ge=1, le=1024, description="Trials at once (default: the Dask workers' "
                                     "count; all of them on a backend with a VM per trial; the cluster's max_nodes on azure).")
    dask_address: str | None = Field(None, description="Scheduler of an existing Dask cluster (or GYMFLOW_DASK_ADDRESS); default: a local cluster.")

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in grid.items():
            if not values:
                raise PydanticCustomError("grid", "{msg}", {"msg": f"grid.{path} is empty; give at least one value"})
        return grid

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise PydanticCustomError("seeds", "seeds must be distinct non-negative integers", {})
        return seeds


_ZOO_LIFTS = {"n_envs": ("env", "n_envs"), "normalize": ("env", "normalize"), "frame_stack": ("env", "frame_stack"), "policy": ("algorithm", "policy")}


class Spec(_Model):
    """One experiment: what to train, for how long, how to evaluate it, where to run and store it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="Experiment name: letters, digits, '_', '.', '-'.")
    description: str = Field("", description="Free text, recorded with the trial.")
    env: EnvSpec
    algorithm: AlgorithmSpec
    budget: BudgetSpec
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for the envs, the algorithm and evaluation.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: str = Field(DEFAULT_STORAGE, min_length=1, description="Run directory: a local path or file://, gs://bucket/..., az://container/...")
    create_bucket: bool = Field(False, description="gs:// or az:// storage: provision creates the bucket (container) when "
                                "it is missing; otherwise a missing one is refused before anything starts.")
    backend: BackendSpec = Field(default_factory=LocalBackendSpec)
    sweep: SweepSpec | None = Field(None, description="Run many trials of this spec (gymflow sweep); absent in a trial's spec.")
    trial_id: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Set by gymflow: derived from the resolved spec.")

    @model_validator(mode="before")
    @classmethod
    def _lift_zoo_keys(cls, data: Any) -> Any:
        """Move the zoo's env-level keys (n_envs, normalize, frame_stack, policy) out of hyperparams."""
        algo = data.get("algorithm") if isinstance(data, dict) else None
        params = algo.get("hyperparams") if isinstance(algo, dict) else None
        if not isinstance(params, dict) or not set(params) & set(_ZOO_LIFTS):
            return data
        data = dict(data)
        params = dict(params)
        for key, (section, field) in _ZOO_LIFTS.items():
            if key not in params:
                continue
            value = params.pop(key)
            target = dict(data.get(section) or {})
            if field in target and target[field] != value:
                raise PydanticCustomError(
                    "conflict",
                    "{msg}",
                    {"msg": f"algorithm.hyperparams.{key} ({value!r}) conflicts with {section}.{field} ({target[field]!r}); keep one"},
                )
            target[field] = value
            data[section] = target
        data["algorithm"] = {**data["algorithm"], "hyperparams": params}
        return data

    @model_validator(mode="after")
    def _schedules_need_timesteps(self) -> Spec:
        if self.budget.episodes is None:
            return self
        for key, value in self.algorithm.hyperparams.items():
            if isinstance(value, str) and key in self.algorithm.info.schedule_keys:
                raise PydanticCustomError(
                    "hyperparam",
                    "{message}",
                    {"key": key, "message": f"the schedule {value!r} decays over budget.timesteps; with an episodes budget use a constant"},
                )
        return self

    @property
    def experiment(self) -> str:
        """The MLflow experiment name."""
        return self.tracking.experiment or self.name

    @property
    def run_name(self) -> str:
        """The trial's name in Prefect, MLflow and a cloud's console: <name>-<algo>-<env>-seed<seed>-<short id>."""
        env = re.sub(r"[^A-Za-z0-9]+", "-", self.env.id.split(":")[-1]).strip("-").lower()
        short = (self.trial_id or "").rsplit("-", 1)[-1][:6]
        return f"{self.name}-{self.algorithm.name}-{env}-seed{self.seed}-{short}"
