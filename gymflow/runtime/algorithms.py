"""Turn an AlgorithmSpec's canonical hyperparameters into an SB3 model."""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import numpy as np

from gymflow import hyperparams
from gymflow.runtime.devices import Choice, choose
from gymflow.spec import AlgorithmSpec

logger = logging.getLogger(__name__)


class LinearSchedule:
    """rl-zoo's ``lin_<x>``: x at the start of training, decaying linearly to 0 at the end."""

    def __init__(self, start: float) -> None:
        self.start = start

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.start

    def __repr__(self) -> str:
        return f"lin_{self.start}"


THREADS_ENV = "GYMFLOW_TORCH_THREADS"


def warm_up() -> None:
    """Load what building a first model would load lazily: a torch optimizer's first parameter group
    imports torch._dynamo (~1.5 s here), once per process."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def limit_threads() -> None:
    """Apply the torch thread limit the backend set (parallel trials on one machine must not oversubscribe its cores)."""
    import torch

    threads = os.environ.get(THREADS_ENV, "")
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def device_for(algo: AlgorithmSpec, observation_space: Any) -> Choice:
    """The device to train `algo` on (gymflow.runtime.devices: auto picks the faster one); applies the thread limit."""
    import torch

    limit_threads()
    return choose(algo.device, algo, policy_for(algo, observation_space), torch.cuda.is_available())


SMALL_NET_WIDTH = 128  # the widest layer up to which an MLP policy trains fastest on one CPU thread
MLP_MAX_THREADS = 2  # a wider MLP gains from a second thread, and loses from many
_torch_default_threads: int | None = None


def fit_threads(model: Any, device: str) -> int:
    """Set torch's CPU threads for this model, unless the backend (GYMFLOW_TORCH_THREADS) or the user
    (OMP_NUM_THREADS) chose already; the thread count in use.

    Torch splits every op over one thread per core. The MLPs of control tasks make ops too short to
    split, and synchronising many threads costs more than it saves. Measured: on a 2-core machine PPO
    on CartPole-v1 (64x64) trained as fast on one thread as on two (100k timesteps, 3 pairs), while
    SAC's 256x256 was ~10% faster on two; on a 16-vCPU machine torch's default (16 threads) ran SAC
    on Pendulum-v1 at 46 steps/s against 66 on one thread. So an MLP policy whose widest layer has at
    most SMALL_NET_WIDTH units gets one thread, a wider MLP at most MLP_MAX_THREADS, and a
    convolutional policy torch's default. Decided per model: a reused worker may train another next.
    """
    import torch

    global _torch_default_threads
    if _torch_default_threads is None:
        _torch_default_threads = torch.get_num_threads()
    if device != "cpu" or os.environ.get(THREADS_ENV) or os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    modules = list(model.policy.modules())
    convolutional = any(isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)) for m in modules)
    widest = max((m.out_features for m in modules if isinstance(m, torch.nn.Linear)), default=0)
    if convolutional:
        threads, kind = _torch_default_threads, "convolutional"
    elif widest <= SMALL_NET_WIDTH:
        threads, kind = 1, "small MLP"
    else:
        threads, kind = min(MLP_MAX_THREADS, _torch_default_threads), f"{widest}-unit MLP"
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        logger.info("torch uses %d CPU thread%s for this %s policy", threads, "" if threads == 1 else "s", kind)
    return threads


def _activation(name: str) -> type:
    import torch.nn as nn

    return getattr(nn, hyperparams.ACTIVATIONS[name])


def _optimizer(name: str) -> type:
    import torch.optim as optim

    if name == "rmsproptflike":
        from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

        return RMSpropTFLike
    return {"adam": optim.Adam, "adamw": optim.AdamW, "rmsprop": optim.RMSprop, "sgd": optim.SGD}[name]


def _extractor(name: str) -> type:
    from stable_baselines3.common import torch_layers

    if name in hyperparams.EXTRACTORS:
        return getattr(torch_layers, name)  # type: ignore[no-any-return]
    from gymflow.imports import import_object

    cls = import_object(name)
    if not (isinstance(cls, type) and issubclass(cls, torch_layers.BaseFeaturesExtractor)):
        raise TypeError(f"features_extractor_class {name!r} is not a BaseFeaturesExtractor subclass")
    return cls


def _policy_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "features_extractor_class" in out:
        out["features_extractor_class"] = _extractor(out["features_extractor_class"])
    if "activation_fn" in out:
        out["activation_fn"] = _activation(out["activation_fn"])
    if "optimizer_class" in out:
        out["optimizer_class"] = _optimizer(out["optimizer_class"])
    return out


def _action_noise(kind: str, std: float, n_actions: int) -> Any:
    from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

    mean, sigma = np.zeros(n_actions), std * np.ones(n_actions)
    if kind == "normal":
        return NormalActionNoise(mean=mean, sigma=sigma)
    return OrnsteinUhlenbeckActionNoise(mean=mean, sigma=sigma)


def model_kwargs(algo: AlgorithmSpec, action_space: Any) -> dict[str, Any]:
    """Constructor keyword arguments for the SB3 class, from canonical hyperparameters."""
    cls = algo.info.load()
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
    params = dict(algo.hyperparams)
    noise_type, noise_std = params.pop("noise_type", None), params.pop("noise_std", 0.1)
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in algo.info.schedule_keys:
            value = LinearSchedule(hyperparams.schedule_start(value)) if isinstance(value, str) else value
        elif key == "policy_kwargs":
            value = _policy_kwargs(value)
        elif key == "train_freq" and isinstance(value, list):
            value = tuple(value)
        elif isinstance(defaults.get(key), int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[key] = value
    if noise_type is not None:
        out["action_noise"] = _action_noise(noise_type, float(noise_std), int(np.prod(action_space.shape)))
    return out


def policy_for(algo: AlgorithmSpec, observation_space: Any) -> str:
    """The spec's policy, or the algorithm's default adapted to dict and image observations."""
    if algo.policy is not None:
        return algo.policy
    from gymnasium import spaces
    from stable_baselines3.common.preprocessing import is_image_space

    recurrent = algo.name == "recurrentppo"
    if isinstance(observation_space, spaces.Dict):
        return "MultiInputLstmPolicy" if recurrent else "MultiInputPolicy"
    if is_image_space(observation_space) and algo.name != "ars":
        return "CnnLstmPolicy" if recurrent else "CnnPolicy"
    return algo.info.default_policy


def build_model(algo: AlgorithmSpec, venv: Any, seed: int, device: str) -> Any:
    """A new SB3 model for the vectorised env."""
    cls = algo.info.load()
    kwargs = model_kwargs(algo, venv.action_space)
    policy = policy_for(algo, venv.observation_space)
    logger.info("building %s with %s on %s: %s", cls.__name__, policy, device, kwargs)
    model = cls(policy, venv, seed=seed, device=device, verbose=0, **kwargs)
    fit_threads(model, device)
    return model


def load_model(algo: AlgorithmSpec, path: str, venv: Any, device: str) -> Any:
    """Load a saved model and attach the env; learning continues where it stopped."""
    cls = algo.info.load()
    model = cls.load(path, env=venv, device=device)
    fit_threads(model, device)
    return model
