"""Every algorithm gymflow names trains a tiny budget through the worker and evaluates."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import base_spec
from gymflow import worker
from gymflow.results import Status

CASES = [
    ("ppo", "CartPole-v1", {"n_steps": 64, "batch_size": 64, "n_epochs": 1}),
    ("a2c", "CartPole-v1", {"n_steps": 8}),
    ("dqn", "CartPole-v1", {"learning_starts": 64, "buffer_size": 1000, "train_freq": 16}),
    ("qrdqn", "CartPole-v1", {"learning_starts": 64, "buffer_size": 1000, "train_freq": 16,
                              "policy_kwargs": {"n_quantiles": 10, "net_arch": [32]}}),
    ("trpo", "CartPole-v1", {"n_steps": 64, "batch_size": 64}),
    ("recurrentppo", "CartPole-v1", {"n_steps": 64, "batch_size": 64, "n_epochs": 1, "policy_kwargs": {"lstm_hidden_size": 16}}),
    ("ars", "CartPole-v1", {"n_delta": 2}),
    ("sac", "Pendulum-v1", {"learning_starts": 64, "buffer_size": 1000, "batch_size": 32, "train_freq": [1, "step"]}),
    ("td3", "Pendulum-v1", {"learning_starts": 64, "buffer_size": 1000, "batch_size": 32, "noise_type": "normal", "noise_std": 0.1}),
    ("ddpg", "Pendulum-v1", {"learning_starts": 64, "buffer_size": 1000, "batch_size": 32, "noise_type": "ornstein-uhlenbeck", "noise_std": 0.5}),
    ("tqc", "Pendulum-v1", {"learning_starts": 64, "buffer_size": 1000, "batch_size": 32, "top_quantiles_to_drop_per_net": 1}),
]


@pytest.mark.parametrize(("algo", "env_id", "params"), CASES, ids=[c[0] for c in CASES])
def test_algorithm_trains_checkpoints_and_evaluates(algo: str, env_id: str, params: dict[str, Any], make_run: Any) -> None:
    spec = base_spec(env={"id": env_id, "n_envs": 2}, algorithm={"name": algo, "hyperparams": params},
                     budget={"timesteps": 256}, evaluation={"every_timesteps": 128, "episodes": 1},
                     checkpoint={"every_timesteps": 128, "replay_buffer": True})
    store = make_run(spec)
    assert worker.train(store) == "completed"
    status = Status.model_validate(store.read_json("status.json"))
    if algo == "ars":  # ARS steps in whole iterations (2 * n_delta episodes): it stops at the first past the budget
        assert 256 <= status.timesteps <= 256 + 2 * 2 * 500
    else:
        assert status.timesteps == 256
    report = worker.evaluate(store)
    assert report.n_episodes == 1 and report.episodes[0].length > 0
    newest = max(p for p in (store.workdir / "checkpoints").iterdir())
    has_buffer = (newest / "replay_buffer.pkl").exists()
    assert has_buffer == (algo in {"dqn", "qrdqn", "sac", "td3", "ddpg", "tqc"})


def test_small_mlp_policies_train_on_one_cpu_thread_unless_someone_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from stable_baselines3 import PPO, SAC

    from gymflow.runtime import algorithms
    from gymflow.runtime.algorithms import THREADS_ENV, fit_threads

    before = torch.get_num_threads()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(algorithms, "_torch_default_threads", None)  # torch's default is what it has now
        small = PPO("MlpPolicy", "CartPole-v1", n_steps=16, device="cpu")  # 64x64
        wide = PPO("MlpPolicy", "CartPole-v1", n_steps=16, device="cpu", policy_kwargs={"net_arch": [256, 256]})
        assert fit_threads(small, "cpu") == 1 and torch.get_num_threads() == 1
        default = fit_threads(wide, "cpu")  # torch's own choice comes back for the next, larger model
        assert default == torch.get_num_threads() and default > 1
        assert fit_threads(SAC("MlpPolicy", "Pendulum-v1", device="cpu"), "cpu") == default  # 256x256
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
        assert fit_threads(small, "cpu") == default
    finally:
        torch.set_num_threads(before)
