"""Evaluation of a model on a separate env, and the worker's final `evaluate` phase."""

from __future__ import annotations

import logging
from typing import Any

from gymflow.results import CURVE_FILE, EVAL_FILE, EVAL_METRICS, MODEL_FILE, TRAIN_METRICS, VECNORM_FILE, EvalReport
from gymflow.spec import Spec
from gymflow.storage import RunStore

logger = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 10_000
MAX_EVAL_ENVS = 16


def eval_env(spec: Spec, stats_path: str | None = None, seed_offset: int = EVAL_SEED_OFFSET) -> Any:
    """A VecEnv for evaluation: same wrappers, frozen statistics, raw rewards.

    Episodes are spread over up to MAX_EVAL_ENVS envs stepped together, so the policy
    acts on a batch per step instead of one observation at a time.
    """
    from gymflow.runtime.envs import build_vec_env

    gamma = float(spec.algorithm.hyperparams.get("gamma", 0.99))
    n_envs = min(spec.evaluation.episodes, MAX_EVAL_ENVS)
    return build_vec_env(spec.env, spec.seed + seed_offset, n_envs, training=False, gamma=gamma, stats_path=stats_path)


def run_episodes(model: Any, venv: Any, episodes: int, deterministic: bool) -> EvalReport:
    """Play `episodes` full episodes and summarise them."""
    from stable_baselines3.common.evaluation import evaluate_policy

    rewards, lengths = evaluate_policy(
        model, venv, n_eval_episodes=episodes, deterministic=deterministic, return_episode_rewards=True, warn=False
    )
    return EvalReport.from_episodes(list(rewards), list(lengths), deterministic, int(model.num_timesteps))


def sync_normalization(train_env: Any, venv: Any) -> None:
    """Copy the training env's observation statistics to the evaluation env."""
    from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization

    if isinstance(venv, VecNormalize) or isinstance(train_env, VecNormalize):
        sync_envs_normalization(train_env, venv)


def write_curve(store: RunStore, spec: Spec) -> None:
    """Redraw learning_curve.png from the metrics recorded so far."""
    from gymflow.runtime.metrics import read_jsonl
    from gymflow.runtime.plot import learning_curve

    title = f"{spec.name}: {spec.algorithm.name} on {spec.env.id} (seed {spec.seed})"
    learning_curve(
        read_jsonl(store.fetch(TRAIN_METRICS)), read_jsonl(store.fetch(EVAL_METRICS)), title, store.workdir / CURVE_FILE
    )
    store.publish(CURVE_FILE)


def evaluate_run(store: RunStore, spec: Spec) -> EvalReport:
    """The final evaluation: the run's model.zip over the spec's episodes, written to eval.json."""
    from gymflow.runtime.algorithms import device_for, load_model

    if not store.exists(MODEL_FILE):
        from gymflow.errors import RunDirError

        raise RunDirError(f"{store.uri} has no {MODEL_FILE}; run `gymflow worker train {store.uri}` first")
    stats = str(store.fetch(VECNORM_FILE)) if store.exists(VECNORM_FILE) else None
    venv = eval_env(spec, stats)
    try:
        model = load_model(spec.algorithm, str(store.fetch(MODEL_FILE)), venv, device_for(spec.algorithm, venv.observation_space).device)
        report = run_episodes(model, venv, spec.evaluation.episodes, spec.evaluation.deterministic)
    finally:
        venv.close()
    report = report.model_copy(update=_which_model(store, report.timesteps))
    store.write_json(EVAL_FILE, report.model_dump(mode="json"))
    write_curve(store, spec)
    logger.info("final evaluation of %s: %.2f +/- %.2f over %d episodes", report.which(), report.mean_reward,
                report.std_reward, report.n_episodes)
    return report


def _which_model(store: RunStore, timesteps: int) -> dict[str, Any]:
    """What model.json says model.zip is (the final or the best model); a run dir from before it is the final."""
    from gymflow.results import MODEL_INFO_FILE, ModelInfo

    try:
        info = ModelInfo.model_validate(store.read_json(MODEL_INFO_FILE))
    except (FileNotFoundError, ValueError):
        return {"model": "final", "trained_timesteps": timesteps}
    return {"model": info.model, "trained_timesteps": info.trained_timesteps}
