"""The worker on a real run dir: outputs, budgets, early stopping, failure, signals, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import base_spec
from gymflow import worker
from gymflow.results import EvalReport, Status
from gymflow.runtime import checkpoints


def _status(store: Any) -> Status:
    return Status.model_validate(store.read_json("status.json"))


def _records(store: Any, rel: str) -> list[dict[str, Any]]:
    """The metrics file's timeline (a resume marker drops what the killed attempt trained past its checkpoint)."""
    from gymflow.runtime.metrics import read_jsonl

    return read_jsonl(store.fetch(rel))


def test_train_then_evaluate_fills_the_run_dir(make_run: Any, cli: Any) -> None:
    store = make_run(base_spec(env={"id": "CartPole-v1", "n_envs": 2, "normalize": True}))
    assert cli("worker", "train", store.uri).code == 0
    status = _status(store)
    assert (status.state, status.phase, status.timesteps, status.device) == ("completed", "train", 512, "cpu")
    assert "training on cpu: " in (store.workdir / "worker.log").read_text()  # what auto chose, and why
    assert status.versions["stable-baselines3"] and status.heartbeat_at and status.pid
    train = _records(store, "metrics/train.jsonl")
    assert len(train) >= 3 and all("timesteps" in r and "time" in r for r in train)
    assert any("rollout/ep_rew_mean" in r for r in train)
    evals = _records(store, "metrics/eval.jsonl")
    assert [r["timesteps"] for r in evals] == [256, 512]
    assert store.exists("model.zip") and store.exists("vecnormalize.pkl")
    assert checkpoints.newest(store).timesteps == 512

    result = cli("worker", "evaluate", store.uri)
    assert result.code == 0 and "mean reward" in result.stdout
    report = EvalReport.model_validate(store.read_json("eval.json"))
    assert report.n_episodes == 2 and len(report.episodes) == 2 and report.deterministic
    assert report.mean_reward == pytest.approx(sum(e.reward for e in report.episodes) / 2)
    assert (store.workdir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (store.workdir / "worker.log").read_text()
    assert "checkpoint saved at 512 timesteps" in log and "final evaluation" in log


def test_episode_budget_counts_episodes_across_envs(make_run: Any) -> None:
    spec = base_spec(env={"id": "sim_envs:OptionEnv", "n_envs": 2}, budget={"episodes": 10})
    store = make_run(spec)
    assert worker.train(store) == "completed"
    status = _status(store)
    assert status.episodes == 10 and status.timesteps == 10 * 20  # 20-step episodes, both envs in lockstep


def test_reward_threshold_stops_training_early(make_run: Any) -> None:
    spec = base_spec(budget={"timesteps": 4096}, evaluation={"every_timesteps": 256, "episodes": 2,
                                                              "early_stopping": {"reward_threshold": 1.0}})
    store = make_run(spec)
    assert worker.train(store) == "completed"
    status = _status(store)
    assert status.timesteps == 256
    assert status.stop_reason == "reward threshold 1.0 reached"


def test_patience_stops_after_evaluations_without_improvement(make_run: Any) -> None:
    spec = base_spec(env={"id": "sim_envs:OptionEnv", "n_envs": 2}, budget={"timesteps": 20000},
                     algorithm={"name": "ppo", "hyperparams": {"n_steps": 64, "learning_rate": 0.0}},
                     evaluation={"every_timesteps": 128, "episodes": 1, "early_stopping": {"patience": 2}})
    store = make_run(spec)
    worker.train(store)
    status = _status(store)
    assert status.stop_reason == "no improvement in 2 evaluations"
    assert status.timesteps == 3 * 128  # the first evaluation sets the best, two more fail to beat it


def test_scenario_options_are_drawn_per_episode_and_reproducible() -> None:
    from gymflow.runtime.envs import make_single_env
    from gymflow.spec import EnvSpec

    spec = EnvSpec(id="sim_envs:OptionEnv", scenario={"target": {"min": 2, "max": 3}, "mode": {"values": ["a", "b"]}})
    env = make_single_env(spec, seed=5)
    infos = [env.reset()[1]["scenario"] for _ in range(20)]
    assert all(2 <= i["target"] <= 3 for i in infos) and {i["mode"] for i in infos} == {"a", "b"}
    assert len({i["target"] for i in infos}) == 20
    assert env.unwrapped.seen_options[-1] == infos[-1]  # the env received the drawn options
    again = make_single_env(spec, seed=5)
    assert [again.reset()[1]["scenario"] for _ in range(20)] == infos


def test_each_training_episode_records_the_scenario_it_was_drawn_with(make_run: Any) -> None:
    """The CSTR example's lesson: the reference and the noise drawn per episode go to metrics/episodes.jsonl, inside
    their ranges and different from episode to episode and seed to seed; their means reach the training metrics."""
    from gymflow.runtime.metrics import read_jsonl

    lesson = {"cref": {"min": 0.8, "max": 0.92}, "noise": {"values": [0.0, 2.0]}}
    drawn = []
    for seed in (0, 1):
        spec = base_spec(env={"id": "examples.cstr:CSTREnv", "n_envs": 2, "kwargs": {"minutes": 2.0}, "scenario": lesson},
                         algorithm={"name": "ppo", "hyperparams": {"n_steps": 64, "batch_size": 64, "n_epochs": 1}},
                         budget={"timesteps": 512}, seed=seed)
        store = make_run(spec)
        assert worker.train(store) == "completed"
        episodes = [json.loads(line) for line in store.read_bytes("metrics/episodes.jsonl").decode().splitlines()]
        assert len(episodes) >= 10 and all(e["length"] == 20 and e["return"] is not None for e in episodes)
        crefs = [e["scenario"]["cref"] for e in episodes]
        assert all(0.8 <= c <= 0.92 for c in crefs) and len(set(crefs)) == len(crefs)
        assert {e["scenario"]["noise"] for e in episodes} == {0.0, 2.0}
        assert any("scenario/cref" in r for r in read_jsonl(store.fetch("metrics/train.jsonl")))
        drawn.append(crefs)
    assert not set(drawn[0]) & set(drawn[1])  # another seed, other draws


def test_wrappers_are_applied_with_their_kwargs() -> None:
    from gymflow.runtime.envs import make_single_env
    from gymflow.spec import EnvSpec

    env = make_single_env(EnvSpec(id="CartPole-v1", wrappers=[{"path": "sim_envs:ScaleReward", "kwargs": {"scale": 3.0}}]), seed=0)
    env.reset()
    assert env.step(0)[1] == 3.0


def test_failing_simulator_exits_nonzero_with_the_error_in_status(make_run: Any, cli: Any) -> None:
    store = make_run(base_spec(env={"id": "sim_envs:ExplodingEnv", "kwargs": {"fail_after": 50}}))
    result = cli("worker", "train", store.uri)
    assert result.code != 0
    status = _status(store)
    assert status.state == "failed" and status.error == "RuntimeError: simulator diverged"
    assert "Traceback" in (store.workdir / "worker.log").read_text()


def test_cuda_where_torch_sees_none_fails_at_once_saying_so_and_library_warnings_reach_the_worker_log(
        make_run: Any) -> None:
    """A spec that reached a machine without CUDA (a CPU VM, a CPU-only torch) asking for cuda fails before training
    instead of training on the CPU under a status that says cuda."""
    spec = base_spec(env={"id": "sim_envs:OptionEnv", "kwargs": {"warn": "the simulator's own warning"}},
                     algorithm={"name": "ppo", "device": "cuda", "hyperparams": {"n_steps": 64, "batch_size": 64}})
    store = make_run(spec)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "gymflow", "worker", "train", store.uri], env=env, capture_output=True,
                          text=True, timeout=300)  # its own process: pytest records warnings in its own
    assert done.returncode != 0
    status = _status(store)
    assert status.state == "failed" and status.device is None and status.timesteps == 0
    assert status.error == ("NoCudaError: algorithm.device: cuda was asked for, but torch on this machine sees no CUDA "
                            "device (no GPU, no driver, or a CPU-only torch build); set algorithm.device to auto or cpu, "
                            "or run on a machine with a GPU")
    log = (store.workdir / "worker.log").read_text()
    assert "UserWarning: the simulator's own warning" in log  # a library's warning, in the log the user reads


def test_completed_training_is_not_repeated_and_the_launch_still_answers(make_run: Any) -> None:
    """A rerun after a run that died between training and evaluation: the train launch trains nothing, and the
    orchestrator sees a completed status of this launch (not the old one, which it would take for no answer)."""
    from backends.base import Timing
    from tasks.follow import _Heartbeat as Heartbeat  # the follower's rule for "this launch wrote it"

    store = make_run()
    worker.train(store)
    first = (store.workdir / "model.zip").stat().st_mtime_ns
    before = _status(store)
    assert worker.train(store) == "completed"
    assert (store.workdir / "model.zip").stat().st_mtime_ns == first
    after = _status(store)
    assert after.state == "completed" and after.timesteps == before.timesteps and after.started_at > before.started_at
    assert Heartbeat(Timing(), "train", before).fresh(after) == after


def _start_worker(store: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gymflow", "worker", "train", store.uri],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "CI": "true"})


def _wait_for_checkpoint(store: Any, proc: subprocess.Popen[bytes], at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ckpt = checkpoints.newest(store)
        if ckpt is not None and ckpt.timesteps >= at_least:
            return
        assert proc.poll() is None, "worker ended early"
        time.sleep(0.2)
    raise AssertionError("no checkpoint in time")


RESUME_SPEC = base_spec(env={"id": "CartPole-v1", "n_envs": 2, "normalize": True}, budget={"timesteps": 8192},
                        checkpoint={"every_timesteps": 1024, "keep": 2}, evaluation={"every_timesteps": 2048, "episodes": 1})


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_from_the_newest_checkpoint_and_trains_exactly_the_budget(make_run: Any) -> None:
    store = make_run(RESUME_SPEC)
    proc = _start_worker(store)
    _wait_for_checkpoint(store, proc, 3072)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed_at = checkpoints.newest(store).timesteps
    assert _status(store).state == "running"  # a killed worker cannot say so; its heartbeat just stops

    assert worker.train(store) == "completed"
    status = _status(store)
    assert status.resumed_from == killed_at and killed_at < 8192
    assert status.timesteps == 8192
    final = checkpoints.newest(store)
    assert final.timesteps == 8192
    steps = [r["timesteps"] for r in _records(store, "metrics/train.jsonl")]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no records repeated after the resume
    assert store.exists("vecnormalize.pkl")


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_so_a_rerun_continues(make_run: Any) -> None:
    store = make_run(RESUME_SPEC)
    proc = _start_worker(store)
    _wait_for_checkpoint(store, proc, 1024)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130
    status = _status(store)
    assert status.state == "interrupted" and status.stop_reason == "SIGTERM"
    assert checkpoints.newest(store).timesteps == status.timesteps  # saved where it stopped
    assert worker.train(store) == "completed"
    assert _status(store).timesteps == 8192


def test_heartbeat_is_refreshed_while_the_worker_runs(tmp_path: Path) -> None:
    from gymflow.runtime.status import StatusFile
    from gymflow.storage import open_run

    store = open_run(str(tmp_path / "run"))
    status = StatusFile(store, interval_s=0.05)
    status.start(state="running")
    first = _status(store).heartbeat_at
    status.set_progress(10, 1)
    time.sleep(0.3)
    second = _status(store)
    status.finish("completed")
    assert second.heartbeat_at > first and second.timesteps == 10
    assert _status(store).state == "completed"


@pytest.mark.slow
def test_worker_stops_with_a_checkpoint_when_its_orchestrator_disappears(make_run: Any) -> None:
    store = make_run(RESUME_SPEC)
    orchestrator = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    proc = subprocess.Popen([sys.executable, "-m", "gymflow", "worker", "train", store.uri], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "CI": "true", "GYMFLOW_PARENT_PID": str(orchestrator.pid)})
    _wait_for_checkpoint(store, proc, 1024)
    orchestrator.kill()
    orchestrator.wait(10)
    assert proc.wait(60) == 130
    status = _status(store)
    assert status.state == "interrupted" and status.timesteps < 8192
    assert checkpoints.newest(store).timesteps == status.timesteps
    assert "the orchestrator (pid" in (store.workdir / "worker.log").read_text()
