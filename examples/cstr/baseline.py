"""The constant-coolant baseline for a CSTR spec: the coolant held at its nominal 300 K whatever the reference,
over episodes drawn from the spec's own lesson (env.scenario), so the figure compares with the agent's evaluation.

    python -m examples.cstr.baseline examples/cstr-sac.yaml [--episodes 100]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np


def constant_coolant(spec_file: str, episodes: int = 100, seed: int = 12345) -> list[float]:
    """The return of each episode with the action 0 (coolant 300 K) throughout."""
    from gymflow import config
    from gymflow.runtime.envs import make_single_env

    spec = config.resolve(spec_file, deep=False)
    env = make_single_env(spec.env, seed)
    returns = []
    for n in range(episodes):
        env.reset(seed=seed + n)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()
    returns = constant_coolant(args.spec, args.episodes)
    print(f"constant coolant (300 K): {statistics.mean(returns):.2f} +/- {statistics.pstdev(returns):.2f} "
          f"over {len(returns)} episodes of the spec's lesson")


if __name__ == "__main__":
    main()
