"""The worker's `train` phase: build or resume, learn to the budget, save the final model."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any

from gymflow.errors import RunDirError
from gymflow.results import (EPISODE_METRICS, EVAL_METRICS, MODEL_FILE, MODEL_INFO_FILE, SPEC_FILE, TRAIN_METRICS,
                             VECNORM_FILE, EvalReport, ModelInfo)
from gymflow.runtime import checkpoints
from gymflow.runtime.callbacks import (BudgetCallback, IntervalCallback, PeriodicEvaluation, Progress,
                                       ScenarioRecorder)
from gymflow.runtime.status import StatusFile
from gymflow.spec import Spec
from gymflow.storage import RunStore

logger = logging.getLogger(__name__)

BEST_DIR = "best"
ProgressHook = Callable[[int, int], None]


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_spec(store: RunStore) -> Spec:
    """The resolved spec that setup wrote to the run dir."""
    if not store.exists(SPEC_FILE):
        raise RunDirError(f"{store.uri} has no {SPEC_FILE}; create the run with `gymflow run SPEC` (or its setup phase) first")
    return Spec.model_validate(store.read_json(SPEC_FILE))


class _StopOnSignal:
    """SIGTERM/SIGINT ask training to stop at the next step, checkpoint and exit cleanly."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        logger.warning("received %s: checkpointing and stopping", signal.Signals(signum).name)
        self.progress.stop_reason = signal.Signals(signum).name
        self.progress.stop_requested.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Trains one run dir to its budget; every piece of state lives in the run dir."""

    def __init__(self, store: RunStore, on_progress: ProgressHook | None = None) -> None:
        self.store = store
        self.spec = load_spec(store)
        self.on_progress = on_progress
        self.status = StatusFile(store, on_beat=store.sync)  # each heartbeat publishes new metric and log lines
        self.progress = Progress()
        self.resumed_from: int | None = None

    def run(self) -> str:
        """Train; return the final state ('completed' or 'interrupted'). Raises on failure."""
        spec = self.spec
        if self.status.status.state == "completed" and self.store.exists(MODEL_FILE) and self.status.status.phase == "train":
            logger.info("training already completed in %s; nothing to do", self.store.uri)
            # this launch answers with a status of its own, or the orchestrator cannot tell it from the old one
            # (a rerun after a run that died between training and evaluation would fail "without writing status.json")
            now = time.time()
            self.status.update(pid=os.getpid(), parent_pid=os.getppid(), started_at=now, finished_at=now)
            return "completed"
        self.status.start(state="running", phase="train", device=None, resumed_from=None,
                          budget_timesteps=spec.budget.timesteps, budget_episodes=spec.budget.episodes)
        try:
            with _StopOnSignal(self.progress):
                state = self._train()
        except BaseException as exc:
            self.status.finish("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        self.status.finish(state, stop_reason=self.progress.stop_reason)
        return state

    def _train(self) -> str:
        from gymflow.runtime.envs import build_vec_env
        from gymflow.runtime.algorithms import build_model, device_for, load_model

        spec, store = self.spec, self.store
        ckpt = checkpoints.newest(store)
        gamma = float(spec.algorithm.hyperparams.get("gamma", 0.99))
        stats = str(ckpt.vecnormalize) if ckpt and ckpt.vecnormalize else None
        venv = build_vec_env(spec.env, spec.seed, spec.env.n_envs, training=True, gamma=gamma, stats_path=stats)
        try:
            choice = device_for(spec.algorithm, venv.observation_space)
            logger.info("training on %s: %s", choice.device, choice.reason)
            device = choice.device
            if ckpt is not None:
                logger.info("resuming from the checkpoint at %d timesteps", ckpt.timesteps)
                model = load_model(spec.algorithm, str(ckpt.model), venv, device)
                if ckpt.replay_buffer is not None:
                    model.load_replay_buffer(ckpt.replay_buffer)
                self.progress.restore(ckpt.meta)
                self.status.update(resumed_from=ckpt.timesteps)
                self.resumed_from = ckpt.timesteps
            else:
                model = build_model(spec.algorithm, venv, spec.seed, device)
            self.status.update(device=model.device.type)  # the device the model is really on
            self._learn(model)
            if self.progress.stop_requested.is_set():
                self._checkpoint(model)
                return "interrupted"
            self._finish(model)
            return "completed"
        finally:
            venv.close()

    def _report(self, timesteps: int, episodes: int) -> None:
        self.status.set_progress(timesteps, episodes)
        if self.on_progress is not None:
            self.on_progress(timesteps, episodes)

    def _checkpoint(self, model: Any) -> None:
        cfg = self.spec.checkpoint
        checkpoints.save(self.store, model, self.progress.meta(), cfg.keep, cfg.replay_buffer)

    def _learn(self, model: Any) -> None:
        from stable_baselines3.common.logger import Logger

        from gymflow.runtime.metrics import JsonlMetrics, Sb3JsonlWriter

        spec, budget = self.spec, self.spec.budget
        done = int(model.num_timesteps)
        if budget.timesteps is not None and done >= budget.timesteps:
            return
        train_metrics = JsonlMetrics(self.store.open_log(TRAIN_METRICS), self.resumed_from)
        model.set_logger(Logger(folder=None, output_formats=[Sb3JsonlWriter(train_metrics)]))
        callbacks: list[Any] = [BudgetCallback(self.progress, budget.timesteps, budget.episodes, self._report)]
        episodes = self.store.open_log(EPISODE_METRICS).open("a", encoding="utf-8") if spec.env.scenario else None
        if episodes is not None:
            callbacks.append(ScenarioRecorder(episodes))
        evaluation = self._periodic_evaluation(model)
        if evaluation is not None:  # before the checkpoint, so the checkpoint records the evaluation
            callbacks.append(IntervalCallback(spec.evaluation.every_timesteps or 1, evaluation))
        callbacks.append(IntervalCallback(spec.checkpoint.every_timesteps, lambda: self._checkpoint(model) or True))
        remaining = (budget.timesteps - done) if budget.timesteps is not None else 10**12
        started = time.perf_counter()
        try:
            model.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=False, progress_bar=False)
        finally:
            train_metrics.close()
            if episodes is not None:
                episodes.close()
        elapsed = time.perf_counter() - started
        logger.info("trained %d timesteps in %.1f s (%.0f steps/s), peak memory %.0f MB", model.num_timesteps - done, elapsed,
                    (model.num_timesteps - done) / max(elapsed, 1e-9), peak_rss_mb())
        if evaluation is not None and self.progress.last_eval_timesteps != model.num_timesteps and not self.progress.stop_requested.is_set():
            evaluation()

    def _periodic_evaluation(self, model: Any) -> PeriodicEvaluation | None:
        from gymflow.runtime.evaluation import eval_env, run_episodes, sync_normalization
        from gymflow.runtime.metrics import JsonlMetrics

        cfg = self.spec.evaluation
        if cfg.every_timesteps is None:
            return None
        venv = eval_env(self.spec)
        metrics = JsonlMetrics(self.store.open_log(EVAL_METRICS), self.resumed_from)

        def evaluate() -> EvalReport:
            sync_normalization(model.get_env(), venv)
            return run_episodes(model, venv, cfg.episodes, cfg.deterministic)

        def record(report: EvalReport, improved: bool) -> None:
            metrics.write(report.timesteps, report.model_dump(exclude={"episodes", "deterministic", "timesteps"}))
            if improved and cfg.keep_best:
                files = checkpoints.save_model_files(model, self.store.workdir / BEST_DIR)
                for path in files:
                    self.store.publish(str(path.relative_to(self.store.workdir)))

        stop = cfg.early_stopping
        return PeriodicEvaluation(self.progress, evaluate, record, stop.patience if stop else None,
                                  stop.min_delta if stop else 0.0, stop.reward_threshold if stop else None)

    def _finish(self, model: Any) -> None:
        """Write model.zip (+ vecnormalize.pkl): the best evaluated model when keep_best, else the last."""
        newest = checkpoints.newest(self.store)
        if newest is None or newest.timesteps != model.num_timesteps:
            self._checkpoint(model)
        workdir = self.store.workdir
        checkpoints.save_model_files(model, workdir)
        best = workdir / BEST_DIR / MODEL_FILE
        info = ModelInfo(model="final", timesteps=int(model.num_timesteps), trained_timesteps=int(model.num_timesteps),
                         best_mean_reward=self.progress.best_mean_reward)
        if self.spec.evaluation.keep_best and best.exists():
            logger.info("keeping the best evaluated model (mean reward %.2f) as %s", self.progress.best_mean_reward or 0.0, MODEL_FILE)
            shutil.copyfile(best, workdir / MODEL_FILE)
            if (workdir / BEST_DIR / VECNORM_FILE).exists():
                shutil.copyfile(workdir / BEST_DIR / VECNORM_FILE, workdir / VECNORM_FILE)
            info = info.model_copy(update={"model": "best", "timesteps": self.progress.best_timesteps or info.timesteps})
        for rel in (MODEL_FILE, VECNORM_FILE):
            if (workdir / rel).exists():
                self.store.publish(rel)
        self.store.write_json(MODEL_INFO_FILE, info.model_dump(mode="json"))
