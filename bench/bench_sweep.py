"""A sweep of 8 CPU-bound trials on 2 Dask workers against the same 8 trainings in a plain SB3 loop.

8 trials of PPO CartPole-v1 (rl-zoo hyperparameters, seeds 0-7, 20k timesteps each):
`gymflow sweep` on a local Dask cluster of 2 workers (the whole pipeline per trial: Prefect
flows and tasks, MLflow, worker processes, final evaluation) against one process training
the same 8 models one after another with stable-baselines3. Printed as a speedup; this
machine has 2 cores, so 2.0 is the limit. gymflow's background Prefect server is started and
the MLflow store created before the timed runs (a user's second sweep); the two are run in
alternating pairs, and the median of the pairs' speedups is reported.

    python bench/bench_sweep.py [--timesteps 20000] [--trials 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def sweep(timesteps: int, trials: int, workdir: Path, repeat: int) -> float:
    spec = yaml.safe_load((ROOT / "examples" / "cartpole-ppo.yaml").read_text())
    spec["budget"] = {"timesteps": timesteps}
    spec["evaluation"] = {"every_timesteps": None, "episodes": 10}
    spec["storage"] = str(workdir / f"runs-{repeat}" / "${trial_id}")  # nothing finished earlier
    spec["sweep"] = {"seeds": list(range(trials)), "max_parallel": 2}
    path = workdir / f"sweep-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gymflow", "sweep", str(path)], check=True, cwd=workdir,
                   stdout=subprocess.DEVNULL, env={**os.environ, "CI": "true"})
    return time.perf_counter() - started


def create_mlflow_store(workdir: Path) -> None:
    """MLflow's default store in the working folder, as a user's earlier runs left it (not timed)."""
    subprocess.run([sys.executable, "-c", "import mlflow; mlflow.MlflowClient(mlflow.get_tracking_uri()).search_experiments()"],
                   check=True, capture_output=True, cwd=workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "gymflow", "server", "start"], check=True, capture_output=True)
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        create_mlflow_store(Path(tmp))
        for i in range(args.repeats):
            loop = plain(args.timesteps, args.trials)
            swept = sweep(args.timesteps, args.trials, Path(tmp), i)
            pairs.append((loop, swept))
            print(f"pair {i + 1}: plain SB3 loop {loop:.1f} s ({args.trials} x {args.timesteps} timesteps) | "
                  f"gymflow sweep on 2 Dask workers {swept:.1f} s | speedup {loop / swept:.2f}", flush=True)
    speedup = statistics.median(loop / swept for loop, swept in pairs)
    print(f"\nspeedup {speedup:.2f} (median of the pairs; 2 cores: 2.0 is the limit; goal >= 1.8)")


if __name__ == "__main__":
    main()
