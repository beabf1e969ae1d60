"""A sweep of 8 CPU-bound trials on 2 Dask workers against the same 8 trainings in a plain SB3 loop.

8 trials of PPO CartPole-v1 (rl-zoo hyperparameters, seeds 0-7, 20k timesteps each):
`gymflow sweep` on a local Dask cluster of 2 workers (the whole pipeline per trial: Prefect
flows and tasks, MLflow, worker processes, final evaluation) against one process training
the same 8 models one after another with stable-baselines3. Printed as a speedup; this
machine has 2 cores, so 2.0 is the limit.

    python bench/bench_sweep.py [--timesteps 20000] [--trials 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

PLAIN = """
import sys, time
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
steps, n = int(sys.argv[1]), int(sys.argv[2])
for seed in range(n):
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                learning_rate=lambda p: p * 1e-3, clip_range=lambda p: p * 0.2, seed=seed, device="cpu", verbose=0)
    model.learn(total_timesteps=steps)
"""


def plain(timesteps: int, trials: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN, str(timesteps), str(trials)], check=True)
    return time.perf_counter() - started


def sweep(timesteps: int, trials: int, workdir: Path) -> float:
    spec = yaml.safe_load((ROOT / "examples" / "cartpole-ppo.yaml").read_text())
    spec["budget"] = {"timesteps": timesteps}
    spec["evaluation"] = {"every_timesteps": None, "episodes": 10}
    spec["storage"] = str(workdir / "runs" / "${trial_id}")
    spec["sweep"] = {"seeds": list(range(trials)), "max_parallel": 2}
    path = workdir / f"sweep-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gymflow", "sweep", str(path)], check=True, cwd=workdir,
                   stdout=subprocess.DEVNULL, env={**os.environ, "CI": "true"})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "gymflow", "server", "start"], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        loop = plain(args.timesteps, args.trials)
        print(f"plain SB3 loop: {args.trials} x {args.timesteps} timesteps in {loop:.1f} s", flush=True)
        swept = sweep(args.timesteps, args.trials, Path(tmp))
        print(f"gymflow sweep on 2 Dask workers: {swept:.1f} s", flush=True)
    print(f"\nspeedup {loop / swept:.2f} (2 cores: 2.0 is the limit; goal >= 1.8)")


if __name__ == "__main__":
    main()
