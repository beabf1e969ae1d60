"""The algorithms gymflow trains, by name. Pure data here; the classes are imported lazily."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AlgorithmInfo:
    """What gymflow needs to know about one algorithm before importing it."""

    name: str
    module: str
    cls: str
    default_policy: str
    on_policy: bool
    schedule_keys: tuple[str, ...] = ("learning_rate",)
    action_spaces: tuple[str, ...] = ("Box", "Discrete", "MultiDiscrete", "MultiBinary")

    def load(self) -> type[Any]:
        """Import and return the algorithm class."""
        return getattr(importlib.import_module(self.module), self.cls)


_SB3 = "stable_baselines3"
_CONTRIB = "sb3_contrib"
_PPO_SCHEDULES = ("learning_rate", "clip_range", "clip_range_vf")
_LR = ("learning_rate",)
_BOX = ("Box",)
_DISCRETE = ("Discrete",)

ALGORITHMS: dict[str, AlgorithmInfo] = {
    info.name: info
    for info in (
        AlgorithmInfo("ppo", _SB3, "PPO", "MlpPolicy", True, _PPO_SCHEDULES),
        AlgorithmInfo("a2c", _SB3, "A2C", "MlpPolicy", True),
        AlgorithmInfo("dqn", _SB3, "DQN", "MlpPolicy", False, _LR, _DISCRETE),
        AlgorithmInfo("sac", _SB3, "SAC", "MlpPolicy", False, _LR, _BOX),
        AlgorithmInfo("td3", _SB3, "TD3", "MlpPolicy", False, _LR, _BOX),
        AlgorithmInfo("ddpg", _SB3, "DDPG", "MlpPolicy", False, _LR, _BOX),
        AlgorithmInfo("tqc", _CONTRIB, "TQC", "MlpPolicy", False, _LR, _BOX),
        AlgorithmInfo("qrdqn", _CONTRIB, "QRDQN", "MlpPolicy", False, _LR, _DISCRETE),
        AlgorithmInfo("trpo", _CONTRIB, "TRPO", "MlpPolicy", True),
        AlgorithmInfo("recurrentppo", _CONTRIB, "RecurrentPPO", "MlpLstmPolicy", True, _PPO_SCHEDULES),
        AlgorithmInfo("ars", _CONTRIB, "ARS", "LinearPolicy", True, ("learning_rate", "delta_std"), ("Box", "Discrete")),
    )
}

ALIASES: dict[str, str] = {
    "qr-dqn": "qrdqn",
    "qr_dqn": "qrdqn",
    "recurrent_ppo": "recurrentppo",
    "recurrent-ppo": "recurrentppo",
    "ppo_lstm": "recurrentppo",
    "ppo-lstm": "recurrentppo",
}


def canonical_name(name: str) -> str | None:
    """The canonical algorithm name for `name` (any case, aliases allowed), or None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in ALGORITHMS else None


def get(name: str) -> AlgorithmInfo:
    """The AlgorithmInfo of a known algorithm name; KeyError otherwise."""
    key = canonical_name(name)
    if key is None:
        raise KeyError(name)
    return ALGORITHMS[key]
