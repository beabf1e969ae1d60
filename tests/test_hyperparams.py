"""rl-zoo hyperparameter formats are parsed (never eval'd) and become the right SB3 objects."""

from __future__ import annotations

import pytest
import torch.nn as nn

from gymflow import hyperparams
from gymflow.runtime.algorithms import LinearSchedule, model_kwargs
from gymflow.spec import AlgorithmSpec


def test_linear_schedule_starts_at_value_and_decays_to_zero() -> None:
    algo = AlgorithmSpec(name="ppo", hyperparams={"learning_rate": "lin_0.001", "clip_range": "lin_0.2"})
    kwargs = model_kwargs(algo, None)
    lr = kwargs["learning_rate"]
    assert isinstance(lr, LinearSchedule)
    assert lr(1.0) == pytest.approx(1e-3) and lr(0.5) == pytest.approx(5e-4) and lr(0.0) == 0.0
    assert kwargs["clip_range"](1.0) == pytest.approx(0.2)


@pytest.mark.parametrize("bad", ["lin_", "lin_x", "exp_0.1", "linear_0.1", True])
def test_malformed_schedules_are_rejected(bad: object) -> None:
    with pytest.raises(hyperparams.HyperparamError):
        hyperparams.parse_schedule("learning_rate", bad)


def test_policy_kwargs_string_in_zoo_form_is_parsed_without_eval() -> None:
    parsed = hyperparams.parse_policy_kwargs("dict(net_arch=dict(pi=[64, 64], vf=[64]), activation_fn=nn.ReLU, ortho_init=False, log_std_init=-2)")
    assert parsed == {"net_arch": {"pi": [64, 64], "vf": [64]}, "activation_fn": "relu", "ortho_init": False, "log_std_init": -2}


def test_code_in_policy_kwargs_is_refused() -> None:
    with pytest.raises(hyperparams.HyperparamError, match="cannot parse"):
        hyperparams.parse_policy_kwargs("dict(net_arch=__import__('os').system('true'))")


def test_activation_and_optimizer_names_become_torch_classes() -> None:
    algo = AlgorithmSpec(name="a2c", hyperparams={"policy_kwargs": {"activation_fn": "Tanh", "optimizer_class": "RMSpropTFLike"}})
    kwargs = model_kwargs(algo, None)["policy_kwargs"]
    assert kwargs["activation_fn"] is nn.Tanh
    assert kwargs["optimizer_class"].__name__ == "RMSpropTFLike"


def test_action_noise_and_integral_floats() -> None:
    from gymnasium import spaces
    from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
    import numpy as np

    box = spaces.Box(-1, 1, shape=(2,), dtype=np.float32)
    kwargs = model_kwargs(AlgorithmSpec(name="td3", hyperparams={"noise_type": "normal", "noise_std": 0.1, "buffer_size": 1e5}), box)
    assert isinstance(kwargs["action_noise"], NormalActionNoise)
    assert kwargs["buffer_size"] == 100000 and isinstance(kwargs["buffer_size"], int)
    kwargs = model_kwargs(AlgorithmSpec(name="ddpg", hyperparams={"noise_type": "ornstein-uhlenbeck", "noise_std": 0.5}), box)
    assert isinstance(kwargs["action_noise"], OrnsteinUhlenbeckActionNoise)


def test_train_freq_tuple_form() -> None:
    kwargs = model_kwargs(AlgorithmSpec(name="sac", hyperparams={"train_freq": [1, "episode"]}), None)
    assert kwargs["train_freq"] == (1, "episode")
