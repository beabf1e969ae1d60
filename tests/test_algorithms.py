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


def test_small_mlp_policies_train_on_one_cpu_thread_wider_ones_on_two_unless_someone_chose(monkeypatch: pytest.MonkeyPatch) -> None:
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
        monkeypatch.setattr(algorithms, "_torch_default_threads", 16)  # as on a 16-core machine
        assert fit_threads(wide, "cpu") == 2 == torch.get_num_threads()  # a wider MLP: two threads, never sixteen
        assert fit_threads(SAC("MlpPolicy", "Pendulum-v1", device="cpu"), "cpu") == 2  # 256x256
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
        assert fit_threads(small, "cpu") == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("algo", "policy", "hyperparams", "device"), [
    ("ppo", "MlpPolicy", {}, "cpu"),  # on-policy MLP: faster on the CPU (1,690 steps/s on an H100 vs 2,600-3,300)
    ("a2c", "MlpPolicy", {"policy_kwargs": {"net_arch": [512, 512]}}, "cpu"),
    ("recurrentppo", "MlpLstmPolicy", {}, "cpu"),
    ("ppo", "CnnPolicy", {}, "cuda"),  # convolutions: what GPUs are for
    ("dqn", "CnnPolicy", {}, "cuda"),
    ("sac", "MlpPolicy", {}, "cuda"),  # 256x256 off-policy: 83 steps/s on the GPU vs 66-70 on one CPU thread
    ("ddpg", "MlpPolicy", {}, "cuda"),  # SB3's default 400x300
    ("sac", "MlpPolicy", {"policy_kwargs": {"net_arch": {"pi": [64, 64], "qf": [64, 64]}}}, "cpu"),
    ("dqn", "MlpPolicy", {}, "cpu"),  # 64x64
])
def test_auto_picks_the_device_known_to_be_faster_for_the_policy(algo: str, policy: str, hyperparams: dict[str, Any],
                                                                 device: str) -> None:
    from gymflow.runtime.devices import choose
    from gymflow.spec import AlgorithmSpec

    spec = AlgorithmSpec.model_validate({"name": algo, "hyperparams": hyperparams})
    choice = choose("auto", spec, policy, cuda=True)
    assert choice.device == device, choice
    assert algo in choice.reason or policy in choice.reason  # the reason names what decided it
    assert choose("auto", spec, policy, cuda=False).device == "cpu"  # no CUDA: the CPU, whatever the policy
    assert choose("cpu", spec, policy, cuda=True).device == "cpu"  # the user's choice stands


def test_cuda_is_refused_where_torch_sees_no_cuda() -> None:
    from gymflow.runtime.devices import NoCudaError, choose
    from gymflow.spec import AlgorithmSpec

    spec = AlgorithmSpec.model_validate({"name": "sac"})
    assert choose("cuda", spec, "MlpPolicy", cuda=True).device == "cuda"
    with pytest.raises(NoCudaError, match=r"algorithm.device: cuda was asked for, but torch on this machine sees no CUDA "
                                          r"device .*set algorithm.device to auto or cpu"):
        choose("cuda", spec, "MlpPolicy", cuda=False)
