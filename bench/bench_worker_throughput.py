"""Training throughput of `gymflow worker train` against a plain SB3 script, side by side.

PPO on CartPole-v1 with rl-zoo's hyperparameters (n_envs 8, n_steps 32, batch 256, 20 epochs,
lin_0.001 / lin_0.2). Runs alternate, and which goes first alternates too (plain-gymflow,
gymflow-plain, ...), so drift in the machine's speed hits both. The worker runs with its status heartbeat, metrics, checkpoints
(every 10k) and the learning-curve data it always writes; periodic evaluation is off because
the plain script does not evaluate. Throughput = timesteps / seconds inside `learn`; the whole
process wall time (imports, env and model set-up) is shown too.

Both processes get the same torch thread count through OMP_NUM_THREADS (`--threads`, default 1),
so the ratio measures what gymflow adds, not a thread setting. `--threads 0` leaves the plain
script torch's default and the worker its own choice (one thread for this small MLP).
This shared 2-core machine drifts by 10-20% within minutes, so runs come in pairs and the
ratio is the median of the pairs' ratios.

    python bench/bench_worker_throughput.py [--timesteps 100000] [--repeats 5] [--threads 1]
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

HERE = Path(__file__).parent


def environment(threads: int) -> dict[str, str]:
    env = {**os.environ, "CI": "true"}
    env.pop("OMP_NUM_THREADS", None)
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def plain(timesteps: int, env: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(HERE / "plain_sb3_ppo_cartpole.py"), str(timesteps)],
                         check=True, capture_output=True, text=True, env=env).stdout
    wall = time.perf_counter() - started
    result = json.loads(out.strip().splitlines()[-1])
    return result["timesteps"] / result["learn_s"], wall


def gymflow(timesteps: int, workdir: Path, env: dict[str, str]) -> tuple[float, float]:
    from gymflow import config
    from gymflow.init import render
    from gymflow.storage import open_run

    run = workdir / f"run-{time.monotonic_ns()}"
    spec = config.resolve(config.parse_yaml(render("ppo", "CartPole-v1"), "bench"), overrides=[
        f"budget.timesteps={timesteps}", "evaluation.every_timesteps=null", f"storage={run}", "algorithm.device=cpu"])
    open_run(str(run)).write_json("spec.json", spec.model_dump(mode="json"))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gymflow", "worker", "train", str(run)], check=True, capture_output=True, env=env)
    wall = time.perf_counter() - started
    match = re.search(r"trained (\d+) timesteps in ([\d.]+) s", (run / "worker.log").read_text())
    assert match, "worker.log has no throughput line"
    return int(match.group(1)) / float(match.group(2)), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (OMP_NUM_THREADS); 0: torch's default")
    args = parser.parse_args()
    env = environment(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            if i % 2 == 0:
                p_fps, p_wall = plain(args.timesteps, env)
                g_fps, g_wall = gymflow(args.timesteps, Path(tmp), env)
            else:
                g_fps, g_wall = gymflow(args.timesteps, Path(tmp), env)
                p_fps, p_wall = plain(args.timesteps, env)
            rows.append((p_fps, g_fps, p_wall, g_wall))
            print(f"run {i + 1}: plain SB3 {p_fps:7.0f} steps/s ({p_wall:5.1f} s wall) | "
                  f"gymflow worker {g_fps:7.0f} steps/s ({g_wall:5.1f} s wall) | ratio {g_fps / p_fps:.3f}", flush=True)
    p_fps, g_fps, p_wall, g_wall = (statistics.median(col) for col in zip(*rows))
    threads = args.threads or "torch's default"
    print(f"\nPPO CartPole-v1, {args.timesteps} timesteps, torch threads {threads}, median of {args.repeats}:")
    ratio = statistics.median(g / p for p, g, _, _ in rows)  # per pair: both runs of a pair saw the same machine
    print(f"  training throughput  plain SB3 {p_fps:7.0f} steps/s   gymflow {g_fps:7.0f} steps/s   "
          f"ratio {ratio:.3f} (median of the pairs' ratios; goal >= 0.97)")
    print(f"  process wall time    plain SB3 {p_wall:7.1f} s         gymflow {g_wall:7.1f} s         ratio {p_wall / g_wall:.3f} (plain/gymflow)")


if __name__ == "__main__":
    main()
