"""Reference: a plain stable-baselines3 script, PPO on CartPole-v1 with rl-zoo's hyperparameters.

Prints one JSON line: {"timesteps": N, "learn_s": seconds spent in model.learn}.
"""

from __future__ import annotations

import json
import sys
import time

from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env


def linear(start: float):  # noqa: ANN201 - the zoo's lin_<x> schedule
    return lambda progress_remaining: progress_remaining * start


def main(timesteps: int) -> None:
    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                learning_rate=linear(1e-3), clip_range=linear(0.2), seed=0, device="cpu", verbose=0)
    started = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    print(json.dumps({"timesteps": int(model.num_timesteps), "learn_s": time.perf_counter() - started}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
