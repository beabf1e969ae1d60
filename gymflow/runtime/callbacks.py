"""SB3 callbacks of the worker: budget, checkpoints, periodic evaluation, stop signals.

Each does O(1) work per step; anything heavier happens only when an interval is crossed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from gymflow.results import EvalReport

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Training progress shared by the callbacks and saved with every checkpoint."""

    episodes: int = 0
    best_mean_reward: float | None = None
    best_timesteps: int | None = None
    evals_without_improvement: int = 0
    last_eval_timesteps: int = -1
    stop_reason: str | None = None
    stop_requested: threading.Event = field(default_factory=threading.Event)

    def meta(self) -> dict[str, Any]:
        return {
            "episodes": self.episodes,
            "best_mean_reward": self.best_mean_reward,
            "best_timesteps": self.best_timesteps,
            "evals_without_improvement": self.evals_without_improvement,
            "last_eval_timesteps": self.last_eval_timesteps,
        }

    def restore(self, meta: dict[str, Any]) -> None:
        """Continue from a checkpoint's record (in place: signal handlers hold this object)."""
        self.episodes = int(meta.get("episodes", 0))
        self.best_mean_reward = meta.get("best_mean_reward")
        self.best_timesteps = meta.get("best_timesteps")
        self.evals_without_improvement = int(meta.get("evals_without_improvement", 0))
        self.last_eval_timesteps = int(meta.get("last_eval_timesteps", -1))


class BudgetCallback(BaseCallback):
    """Counts episodes, reports progress, and stops exactly when the budget is spent."""

    def __init__(self, progress: Progress, timesteps: int | None, episodes: int | None,
                 report: Callable[[int, int], None]) -> None:
        super().__init__()
        self.progress = progress
        self.max_timesteps = timesteps
        self.max_episodes = episodes
        self.report = report

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        if dones is not None:
            self.progress.episodes += int(np.sum(dones))
        self.report(self.num_timesteps, self.progress.episodes)
        if self.progress.stop_requested.is_set():
            self.progress.stop_reason = self.progress.stop_reason or "signal"
            return False
        if self.max_timesteps is not None and self.num_timesteps >= self.max_timesteps:
            return False
        if self.max_episodes is not None and self.progress.episodes >= self.max_episodes:
            return False
        return True


class ScenarioRecorder(BaseCallback):
    """What each training episode was drawn with (env.scenario): one JSON line per finished episode in `out`
    (timesteps, return, length, the drawn values), and the mean of each numeric value over the episodes since the
    last log dump as `scenario/NAME` in the training metrics (so MLflow shows what the agent trained on)."""

    def __init__(self, out: Any) -> None:
        super().__init__()
        self.out = out
        self.current: list[dict[str, Any]] = []

    def _drawn(self, index: int) -> dict[str, Any]:
        infos = getattr(self.training_env, "reset_infos", None) or []
        return dict(infos[index].get("scenario") or {}) if index < len(infos) else {}

    def _on_training_start(self) -> None:
        self.current = [self._drawn(i) for i in range(self.training_env.num_envs)]

    def _on_step(self) -> bool:
        dones, infos = self.locals.get("dones"), self.locals.get("infos") or []
        if dones is None:
            return True
        for index in np.flatnonzero(dones):
            drawn = self.current[index] if index < len(self.current) else {}
            episode = (infos[index] if index < len(infos) else {}).get("episode") or {}
            record = {"timesteps": int(self.num_timesteps), "return": episode.get("r"), "length": episode.get("l"),
                      "scenario": drawn}
            self.out.write(json.dumps(record, default=str) + "\n")
            for name, value in drawn.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.logger.record_mean(f"scenario/{name}", float(value))
            if index < len(self.current):
                self.current[index] = self._drawn(int(index))  # the episode the env reset into
        self.out.flush()
        return True


class IntervalCallback(BaseCallback):
    """Calls ``action`` each time num_timesteps crosses a multiple of ``every``."""

    def __init__(self, every: int, action: Callable[[], bool]) -> None:
        super().__init__()
        self.every = every
        self.action = action
        self._next = every

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps < self._next:
            return True
        self._next = (self.num_timesteps // self.every + 1) * self.every
        return self.action()


class PeriodicEvaluation:
    """Evaluates on a separate env, keeps the best model, and decides early stopping."""

    def __init__(self, progress: Progress, evaluate: Callable[[], EvalReport], on_result: Callable[[EvalReport, bool], None],
                 patience: int | None, min_delta: float, reward_threshold: float | None) -> None:
        self.progress = progress
        self.evaluate = evaluate
        self.on_result = on_result
        self.patience = patience
        self.min_delta = min_delta
        self.reward_threshold = reward_threshold

    def __call__(self) -> bool:
        """Run one evaluation; False means stop training."""
        report = self.evaluate()
        p = self.progress
        p.last_eval_timesteps = report.timesteps
        improved = p.best_mean_reward is None or report.mean_reward > p.best_mean_reward + self.min_delta
        if improved:
            p.best_mean_reward = report.mean_reward
            p.best_timesteps = report.timesteps
            p.evals_without_improvement = 0
        else:
            p.evals_without_improvement += 1
        self.on_result(report, improved)
        logger.info("eval at %d timesteps: %.2f +/- %.2f%s", report.timesteps, report.mean_reward, report.std_reward,
                    " (new best)" if improved else "")
        if self.reward_threshold is not None and report.mean_reward >= self.reward_threshold:
            p.stop_reason = f"reward threshold {self.reward_threshold} reached"
            return False
        if self.patience is not None and p.evals_without_improvement >= self.patience:
            p.stop_reason = f"no improvement in {self.patience} evaluations"
            return False
        return True
