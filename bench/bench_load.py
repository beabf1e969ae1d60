"""A load test: a sweep of many tiny trials, every one recorded once, and what orchestrating a trial costs.

`gymflow sweep` of N trials (default 100) of PPO on CartPole-v1 for a few hundred timesteps each, 2 at a
time, on gymflow's background Prefect server (SQLite) and a SQLite MLflow store, from a fresh
GYMFLOW_HOME. Afterwards it counts what was recorded: trial flow runs in Prefect (all Completed,
none twice) and MLflow runs under the sweep's parent run (one per trial). Then it prints the CPU
time of the whole process tree (the sweep process, its worker processes, the Prefect server)
against a plain SB3 loop training the same N models in one process: the difference per trial is
the orchestration cost of a trial (Prefect flows and tasks, MLflow, worker start-up, evaluation).

    python bench/bench_load.py [--trials 100] [--timesteps 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

PLAIN = """
import sys
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
steps, n = int(sys.argv[1]), int(sys.argv[2])
for seed in range(n):
    env = make_vec_env("CartPole-v1", n_envs=2, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=2, seed=seed, device="cpu", verbose=0)
    model.learn(total_timesteps=steps)
    evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=2, seed=seed + 10000), n_eval_episodes=2)
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """utime + stime of a process that is not our child (the background Prefect server)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plain(timesteps: int, trials: int) -> tuple[float, float]:
    cpu, started = children_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN, str(timesteps), str(trials)], check=True)
    return time.perf_counter() - started, children_cpu() - cpu


def gymflow_sweep(timesteps: int, trials: int, workdir: Path, env: dict[str, str]) -> tuple[float, float, str]:
    spec = {"name": f"load-{int(time.time())}", "env": {"id": "CartPole-v1", "n_envs": 2},
            "algorithm": {"name": "ppo", "hyperparams": {"n_steps": 64, "batch_size": 64, "n_epochs": 2}},
            "budget": {"timesteps": timesteps}, "evaluation": {"episodes": 2},
            "checkpoint": {"every_timesteps": timesteps}, "storage": str(workdir / "runs" / "${trial_id}"),
            "tracking": {"uri": f"sqlite:///{workdir}/mlflow.db"},
            "sweep": {"seeds": list(range(trials)), "max_parallel": 2}}
    path = workdir / "load.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cpu, started = children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gymflow", "sweep", str(path)], cwd=workdir, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
    return time.perf_counter() - started, children_cpu() - cpu, spec["name"]


def recorded(name: str, workdir: Path, api_url: str) -> tuple[int, int, int, int]:
    """(trial flow runs, trials Completed once, MLflow runs under the sweep, distinct trial ids among them). A trial
    whose flow run failed on the Prefect API itself is run again by the sweep, so flow runs may exceed trials."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    runs: list[Any] = []
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        while True:  # the API returns at most 200 at a time
            page = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["trial"])),
                                         flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"{name}-")),
                                         limit=200, offset=len(runs))
            runs += page
            if len(page) < 200:
                break
    completed_runs = [r.name for r in runs if r.state and r.state.is_completed()]
    completed = set(completed_runs)
    if len(completed_runs) != len(completed):
        completed = set()  # a trial completed twice: counted as nothing, the check fails
    mlflow = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = mlflow.get_experiment_by_name(name)
    children = mlflow.search_runs([experiment.experiment_id], filter_string="tags.mlflow.parentRunId != ''",
                                  max_results=5000) if experiment else []
    trial_ids = {r.data.tags.get("gymflow.trial_id") for r in children}
    return len(runs), len(completed), len(children), len(trial_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--timesteps", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gymflow-bench-load-") as tmp:
        workdir = Path(tmp)
        env = {**os.environ, "CI": "true", "GYMFLOW_HOME": str(workdir / "home")}
        env.pop("PREFECT_API_URL", None)
        subprocess.run([sys.executable, "-m", "gymflow", "server", "start", "--port", "4321"], env=env, check=True,
                       capture_output=True)
        server = json.loads((workdir / "home" / "server.json").read_text())
        try:
            server_cpu = process_cpu(int(server["pid"]))
            wall, cpu, name = gymflow_sweep(args.timesteps, args.trials, workdir, env)
            server_cpu = process_cpu(int(server["pid"])) - server_cpu
            flow_runs, completed, mlflow_runs, distinct = recorded(name, workdir, f"{server['url']}/api")
        finally:
            subprocess.run([sys.executable, "-m", "gymflow", "server", "stop"], env=env, capture_output=True)
        plain_wall, plain_cpu = plain(args.timesteps, args.trials)
    total = cpu + server_cpu
    print(f"load test: {args.trials} trials of {args.timesteps} timesteps, 2 at a time, SQLite Prefect server and MLflow")
    print(f"  Prefect trial flow runs: {flow_runs} ({completed} trials Completed, each once; "
          f"{flow_runs - completed} run again after a Prefect API error)   "
          f"MLflow runs under the sweep: {mlflow_runs} ({distinct} distinct trials)")
    ok = completed == mlflow_runs == distinct == args.trials
    print(f"  recorded: {'all, none twice' if ok else 'NOT all once'}")
    print(f"  {'':28}{'gymflow sweep':>16}{'plain SB3 loop':>16}{'ratio':>8}")
    print(f"  {'wall time (s)':28}{wall:16.1f}{plain_wall:16.1f}{wall / plain_wall:8.2f}")
    print(f"  {'CPU time, process tree (s)':28}{total:16.1f}{plain_cpu:16.1f}{total / plain_cpu:8.2f}")
    print(f"    of which the Prefect server: {server_cpu:.1f} s")
    print(f"  orchestration cost per trial: {(total - plain_cpu) / args.trials:.2f} CPU-seconds "
          f"({total / args.trials:.2f} in all per trial, {plain_cpu / args.trials:.2f} to train and evaluate it plainly)")


if __name__ == "__main__":
    main()
