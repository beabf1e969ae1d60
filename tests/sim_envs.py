"""Small envs for tests: one that reads reset options, one that fails on purpose."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class OptionEnv(gym.Env):
    """A 1-D target-tracking task whose target and mode come from reset options."""

    def __init__(self, horizon: int = 20, warn: str | None = None) -> None:
        if warn:  # as a simulator's library would say something on stderr
            import warnings

            warnings.warn(warn, UserWarning, stacklevel=2)
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self.horizon = horizon
        self.seen_options: list[dict[str, Any]] = []
        self.target = 0.0
        self.pos = 0.0
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        self.seen_options.append(dict(options))
        self.target = float(options.get("target", 0.0))
        self.pos, self.t = 0.0, 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([self.pos, self.target], dtype=np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.pos = float(np.clip(self.pos + (int(action) - 1) * 0.5, -10, 10))
        self.t += 1
        reward = -abs(self.pos - self.target)
        return self._obs(), reward, False, self.t >= self.horizon, {}


class ExplodingEnv(OptionEnv):
    """Raises after a number of steps, to test worker failure handling."""

    def __init__(self, fail_after: int = 100) -> None:
        super().__init__()
        self.fail_after = fail_after
        self.total = 0

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.total += 1
        if self.total > self.fail_after:
            raise RuntimeError("simulator diverged")
        return super().step(action)


class ScaleReward(gym.RewardWrapper):
    """A wrapper with a keyword argument."""

    def __init__(self, env: gym.Env, scale: float = 1.0) -> None:
        super().__init__(env)
        self.scale = scale

    def reward(self, reward: float) -> float:
        return reward * self.scale


class StrictOptionEnv(OptionEnv):
    """OptionEnv whose reset refuses options it does not know, without declaring which it takes."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        unknown = sorted(set(options or {}) - {"target", "mode"})
        if unknown:
            raise KeyError(f"no such option: {', '.join(unknown)}")
        return super().reset(seed=seed, options=options)
