"""End-to-end wall time of `gymflow run` against `python -m rl_zoo3.train`, alternating runs.

Both train PPO on CartPole-v1 for 100k timesteps with the zoo's hyperparameters. gymflow
runs the whole pipeline (Prefect flow with six tasks, MLflow tracking, worker processes,
periodic and final evaluation); the zoo runs its trainer (with its own periodic evaluation).
Before the timed runs gymflow's background Prefect server is started and one small untimed
run creates the MLflow store in the working folder, so the timed runs are a user's second
and later runs. Also printed: time from `gymflow run` to the first training step, and
the peak memory (max RSS) of the orchestrator and of the worker.

    python bench/bench_end_to_end.py [--timesteps 100000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def zoo(timesteps: int, workdir: Path) -> float:
    folder = workdir / f"zoo-{time.monotonic_ns()}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "CartPole-v1", "-n", str(timesteps),
                    "--seed", "0", "-f", str(folder), "--device", "cpu", "--verbose", "0"],
                   check=True, capture_output=True, cwd=workdir)
    return time.perf_counter() - started


def gymflow(timesteps: int, workdir: Path) -> tuple[float, float, float, float]:
    """Wall time, seconds to the first training step, orchestrator and worker peak RSS (MB)."""
    run = workdir / f"gf-{time.monotonic_ns()}"
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "gymflow", "run", str(ROOT / "examples" / "cartpole-ppo.yaml"),
         "--set", f"budget.timesteps={timesteps}", "--set", f"storage={run}"],
        check=True, capture_output=True, text=True, cwd=workdir, env={**os.environ, "CI": "true"},
    )
    wall = time.time() - started
    orchestrator_mb = float(re.findall(r"orchestrator peak memory ([\d.]+) MB", proc.stderr)[-1])
    first = [json.loads(line)["time"] for line in (run / "metrics" / "train.jsonl").read_text().splitlines()[:1]]
    log = (run / "worker.log").read_text()
    worker_mb = max((float(m) for m in re.findall(r"peak memory ([\d.]+) MB", log)), default=float("nan"))
    return wall, (first[0] - started) if first else float("nan"), orchestrator_mb, worker_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "gymflow", "server", "start"], check=True, capture_output=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gymflow(2048, Path(tmp))  # a user's first run: creates the MLflow store; not timed
        for i in range(args.repeats):
            z = zoo(args.timesteps, Path(tmp))
            g, first, orch, work = gymflow(args.timesteps, Path(tmp))
            rows.append((z, g, first, orch, work))
            print(f"run {i + 1}: rl_zoo3 {z:6.1f} s | gymflow run {g:6.1f} s (first step after {first:4.1f} s) | ratio {g / z:.3f}", flush=True)
    z, g, first, orch, work = (statistics.median(col) for col in zip(*rows))
    print(f"\nPPO CartPole-v1, {args.timesteps} timesteps, median of {args.repeats} (background Prefect server warm):")
    ratio = statistics.median(row[1] / row[0] for row in rows)  # per pair: both runs of a pair saw the same machine
    print(f"  end-to-end wall time   rl_zoo3 {z:6.1f} s   gymflow {g:6.1f} s   ratio gymflow/zoo {ratio:.3f} "
          f"(median of the pairs' ratios; goal <= 1.0)")
    print(f"  gymflow run -> first training step {first:.1f} s")
    print(f"  peak memory: orchestrator {orch:.0f} MB, worker {work:.0f} MB")


if __name__ == "__main__":
    main()
