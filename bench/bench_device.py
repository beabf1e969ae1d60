"""The figures behind `algorithm.device: auto` and the CPU thread rule (gymflow/runtime/devices.py, algorithms.py).

For each workload — PPO on CartPole-v1 (64x64 MLP, rl-zoo's hyperparameters) and SAC on Pendulum-v1
(256x256 MLP) — it trains a fixed number of steps with plain SB3 under each device and thread setting
that runs here, in a process of its own each (torch's thread pool is set once per process):

- cpu with 1 thread, with 2 threads, and with torch's default (one per core);
- cuda, where torch sees a CUDA device;
- plain SB3 as a user would run it (device "auto": cuda when there is one; torch's default threads);
- what gymflow picks (`auto`'s device and fit_threads' thread count).

It prints steps/s for each and every setting's ratio to plain SB3's, side by side. A 2-core machine
without a GPU only shows the CPU rows; run it on a GPU machine to see the rest.

    python bench/bench_device.py [--ppo-steps 20000] [--sac-steps 2000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
import gymnasium as gym
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
workload, device, threads, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if threads > 0:
    torch.set_num_threads(threads)
if workload == "ppo":
    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                ent_coef=0.0, learning_rate=0.001, clip_range=0.2, device=device, seed=0)
else:
    model = SAC("MlpPolicy", "Pendulum-v1", learning_rate=1e-3, learning_starts=100, device=device, seed=0)
started = time.perf_counter()
model.learn(steps)
print(json.dumps({"steps_s": steps / (time.perf_counter() - started), "device": model.device.type,
                  "threads": torch.get_num_threads()}))
"""


def measure(workload: str, device: str, threads: int, steps: int) -> dict[str, float | str]:
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", CHILD, workload, device, str(threads), str(steps)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def gymflow_pick(workload: str, cuda: bool) -> tuple[str, int]:
    """The device and CPU threads gymflow gives this workload here (its own rules, on the model built once)."""
    from stable_baselines3 import PPO, SAC

    from gymflow.runtime.algorithms import fit_threads
    from gymflow.runtime.devices import choose
    from gymflow.spec import AlgorithmSpec

    device = choose("auto", AlgorithmSpec.model_validate({"name": workload}), "MlpPolicy", cuda).device
    model = PPO("MlpPolicy", "CartPole-v1", device="cpu") if workload == "ppo" else SAC("MlpPolicy", "Pendulum-v1", device="cpu")
    return device, fit_threads(model, "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ppo-steps", type=int, default=20_000)
    parser.add_argument("--sac-steps", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores, CUDA: {torch.cuda.get_device_name(0) if cuda else 'none'}, torch {torch.__version__}")
    for workload, steps in (("ppo", args.ppo_steps), ("sac", args.sac_steps)):
        device, threads = gymflow_pick(workload, cuda)
        settings = [("plain SB3 (auto, default threads)", "auto", 0), ("cpu, 1 thread", "cpu", 1),
                    ("cpu, 2 threads", "cpu", 2), (f"cpu, default ({torch.get_num_threads()} threads)", "cpu", 0)]
        if cuda:
            settings.append(("cuda", "cuda", 1))
        settings.append((f"gymflow: {device}, {threads} thread(s)", device, threads))
        rates: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved, so the machine's drift hits every setting alike
            for name, dev, n in settings:
                rates.setdefault(name, 0.0)
                rates[name] += float(measure(workload, dev, n, steps)["steps_s"]) / args.repeats
        reference = rates[settings[0][0]]
        title = "PPO CartPole-v1 (64x64)" if workload == "ppo" else "SAC Pendulum-v1 (256x256)"
        print(f"\n{title}, {steps} steps, mean of {args.repeats}:")
        print(f"  {'setting':42} {'steps/s':>9} {'vs plain SB3':>13}")
        for name, _, _ in settings:
            print(f"  {name:42} {rates[name]:9.0f} {rates[name] / reference:13.2f}")
        best = max(rates, key=rates.__getitem__)
        print(f"  fastest: {best}; gymflow's pick runs at {rates[settings[-1][0]] / rates[best]:.2f} of its speed")


if __name__ == "__main__":
    main()
