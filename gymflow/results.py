"""Typed contents of the run directory's JSON files, shared by the worker and the orchestrator."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RunState = Literal["pending", "running", "completed", "failed", "interrupted"]

SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
EVAL_FILE = "eval.json"
MODEL_FILE = "model.zip"
VECNORM_FILE = "vecnormalize.pkl"
LOG_FILE = "worker.log"
CURVE_FILE = "learning_curve.png"
TRAIN_METRICS = "metrics/train.jsonl"
EPISODE_METRICS = "metrics/episodes.jsonl"  # each training episode: its return, length and drawn scenario
EVAL_METRICS = "metrics/eval.jsonl"
TRACKING_FILE = "tracking.json"
MODEL_INFO_FILE = "model.json"


class Status(BaseModel):
    """status.json: what the worker is doing, rewritten at least every heartbeat interval."""

    model_config = ConfigDict(extra="allow")

    state: RunState = "pending"
    phase: str = Field("", description="train or evaluate")
    timesteps: int = 0
    episodes: int = 0
    budget_timesteps: int | None = None
    budget_episodes: int | None = None
    resumed_from: int | None = Field(None, description="Timesteps of the checkpoint this run resumed from.")
    stop_reason: str | None = None
    device: str | None = None
    pid: int | None = None
    parent_pid: int | None = None
    host: str | None = None
    started_at: float | None = None
    heartbeat_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)


class EpisodeResult(BaseModel):
    reward: float
    length: int


class EvalReport(BaseModel):
    """eval.json: the final evaluation of a trained model."""

    mean_reward: float
    std_reward: float
    mean_length: float
    std_length: float
    n_episodes: int
    deterministic: bool
    timesteps: int = Field(description="Timesteps the evaluated model was trained for.")
    episodes: list[EpisodeResult]
    model: Literal["final", "best", "checkpoint"] = Field(
        "checkpoint", description="Which model: the final one, the best periodically evaluated one (evaluation.keep_best), "
        "or a model evaluated during training.")
    trained_timesteps: int | None = Field(None, description="Timesteps the trial trained in all (the final model's).")

    def which(self) -> str:
        """'the best model (at 20000 of 60000 timesteps)' / 'the final model (60000 timesteps)'."""
        if self.model == "best" and self.trained_timesteps is not None and self.trained_timesteps != self.timesteps:
            return f"the best model (at {self.timesteps} of {self.trained_timesteps} timesteps)"
        if self.model == "best":
            return f"the best model, also the final one ({self.timesteps} timesteps)"
        return f"the {self.model} model ({self.timesteps} timesteps)"

    @classmethod
    def from_episodes(cls, rewards: list[float], lengths: list[int], deterministic: bool, timesteps: int) -> EvalReport:
        import numpy as np

        return cls(
            mean_reward=float(np.mean(rewards)),
            std_reward=float(np.std(rewards)),
            mean_length=float(np.mean(lengths)),
            std_length=float(np.std(lengths)),
            n_episodes=len(rewards),
            deterministic=deterministic,
            timesteps=timesteps,
            episodes=[EpisodeResult(reward=float(r), length=int(n)) for r, n in zip(rewards, lengths)],
        )


class ModelInfo(BaseModel):
    """model.json: which model model.zip is, written with it at the end of training."""

    model: Literal["final", "best"]
    timesteps: int = Field(description="Timesteps model.zip was trained for.")
    trained_timesteps: int = Field(description="Timesteps the trial trained in all.")
    best_mean_reward: float | None = None


class TrackingRecord(BaseModel):
    """tracking.json, written by the orchestrator: the trial's MLflow run (a resumed trial continues it) and how far
    into each metrics file it has been forwarded there (the next orchestrator forwards the rest)."""

    tracking_uri: str
    mlflow_run_id: str
    forwarded: dict[str, int] = Field(default_factory=dict, description="metrics file -> bytes forwarded to MLflow")


class TrialOutcome(BaseModel):
    """How one trial ended: what the trial flow returns, the CLI prints, and a sweep compares."""

    trial_id: str
    experiment: str
    outcome: Literal["completed", "failed", "cancelled"]
    mean_reward: float | None = None
    std_reward: float | None = None
    timesteps: int = 0
    evaluated: str | None = Field(None, description="Which model was evaluated: 'the best model (at 20000 of 60000 "
                                  "timesteps)', 'the final model (60000 timesteps)'.")
    duration_s: float = 0.0
    mlflow_run_id: str | None = None
    mlflow_location: str | None = None
    run_uri: str = ""
    flow_run_id: str | None = None
    error: str | None = None
    seed: int | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="The swept values of this trial (in a sweep).")

    @property
    def config_key(self) -> str:
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.config.items()) or "base"
