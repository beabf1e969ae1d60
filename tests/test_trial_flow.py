"""The trial flow on a real Prefect server (prefect_test_harness) with real MLflow and real workers."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import base_spec, workers_gone
from gymflow import config
from gymflow.spec import Spec

PHASES = ["provision", "setup", "train", "evaluate", "store", "teardown"]


def _spec(tmp_path: Path, **overrides: Any) -> Spec:
    data = base_spec(**overrides)
    data.setdefault("storage", str(tmp_path / "runs" / "${trial_id}"))
    return config.resolve(data)


def _faulty(tmp_path: Path, **settings: Any) -> Spec:
    return _spec(tmp_path, backend={"kind": "fault_backends:FaultyBackend", **settings})


def _task_runs(flow_run_id: Any) -> dict[str, list[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out: dict[str, list[str]] = {}
    for run in runs:
        out.setdefault(run.name, []).append(run.state.type.value)
    return out


def _run(spec: Spec) -> Any:
    from flows.trial import trial

    return trial(spec, return_state=True)


def _server_copy_of_the_final_state_still_gives_the_result(state: Any, result: Any) -> None:
    """As when the API call that set the final state timed out and its retry returned the server's copy."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import MissingResult

    from flows.returned import result_of

    with get_client(sync_client=True) as client:
        server_copy = client.read_flow_run(state.state_details.flow_run_id).state
    assert server_copy.is_completed() and server_copy.data is None
    assert result_of(server_copy) == result
    with pytest.raises(MissingResult):  # handed over once, not kept for ever
        result_of(server_copy)


def _teardowns(run_dir: Path) -> int:
    path = run_dir / "teardown.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.usefixtures("prefect_server")
def test_trial_runs_six_phases_and_tracks_everything_in_mlflow(tmp_path: Path, mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    spec = _spec(tmp_path, env={"id": "CartPole-v1", "n_envs": 2, "normalize": True})
    state = _run(spec)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.outcome == "completed" and result.timesteps == 512 and result.mean_reward is not None
    _server_copy_of_the_final_state_still_gives_the_result(state, result)
    assert {name: states for name, states in _task_runs(state.state_details.flow_run_id).items()} == {
        name: ["COMPLETED"] for name in PHASES}

    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["env.id"] == "CartPole-v1" and run.data.params["budget.timesteps"] == "512"
    assert run.data.params["algorithm.hyperparams.n_steps"] == "64"
    assert run.data.metrics["eval/final_mean_reward"] == pytest.approx(result.mean_reward)
    assert len(client.get_metric_history(run.info.run_id, "train/value_loss")) >= 2
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/mean_reward")] == [256, 512]
    tags = run.data.tags
    assert tags["gymflow.backend"] == "local" and tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert tags["version.stable-baselines3"] and tags["version.torch"] and tags["version.gymnasium"] and tags["version.gymflow"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"model.zip", "vecnormalize.pkl", "spec.json", "eval.json", "learning_curve.png", "worker.log"}
    stored = Path(mlflow_uri.removeprefix("sqlite:///")).parent / "mlruns" / spec.experiment  # beside the store
    assert client.get_experiment(run.info.experiment_id).artifact_location == stored.as_uri()
    assert (stored / run.info.run_id / "artifacts" / "model.zip").is_file()


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("warm_evaluate_s", [60.0, 0.0])
def test_the_trained_worker_runs_the_evaluate_phase_unless_told_not_to(tmp_path: Path, mlflow_uri: str,
                                                                       warm_evaluate_s: float) -> None:
    spec = _spec(tmp_path, backend={"kind": "local", "warm_evaluate_s": warm_evaluate_s})
    state = _run(spec)
    assert state.is_completed(), state.message
    run_dir = Path(spec.storage)
    train_pid, evaluate_pid = ((run_dir / f"worker-{p}.pid").read_text() for p in ("train", "evaluate"))
    assert (train_pid == evaluate_pid) is (warm_evaluate_s > 0)
    assert len(json.loads((run_dir / "eval.json").read_text())["episodes"]) == 2
    assert workers_gone(run_dir)  # the warm worker exits after evaluating, a fresh one too
    assert not (run_dir / "worker.standby").exists()


@pytest.mark.usefixtures("prefect_server")
def test_a_finished_worker_is_handed_the_next_trial_of_its_orchestrator_unless_it_failed(tmp_path: Path,
                                                                                         mlflow_uri: str) -> None:
    from backends.local import release_idle_workers
    from gymflow.procs import pid_alive

    pooled = {"kind": "local", "reuse_workers_s": 60}
    first, exploding, third = (
        _spec(tmp_path, seed=1, backend=pooled),
        _spec(tmp_path, seed=2, backend=pooled, env={"id": "sim_envs:ExplodingEnv", "kwargs": {"fail_after": 100}}),
        _spec(tmp_path, seed=3, backend=pooled),
    )
    assert _run(first).is_completed()
    first_dir = Path(first.storage)
    reused = int((first_dir / "worker-train.pid").read_text())
    assert pid_alive(reused) and workers_gone(first_dir) is False  # idle, waiting for this process's next trial

    state = _run(exploding)  # handed the idle worker, whose training then fails: it exits and is not kept
    assert state.is_failed() and "simulator diverged" in str(state.result(raise_on_failure=False))
    exploding_dir = Path(exploding.storage)
    assert int((exploding_dir / "worker-train.pid").read_text()) == reused
    assert "handed the next trial" in (exploding_dir / "worker-train.out").read_text()
    assert "simulator diverged" in (exploding_dir / "worker.log").read_text()
    assert "simulator diverged" not in (first_dir / "worker.log").read_text()  # each run dir keeps its own log
    deadline = time.monotonic() + 20
    while pid_alive(reused) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(reused)

    state = _run(third)
    assert state.is_completed(), state.message
    third_dir = Path(third.storage)
    fresh = int((third_dir / "worker-train.pid").read_text())
    assert fresh != reused and int((third_dir / "worker-evaluate.pid").read_text()) == fresh
    assert json.loads((third_dir / "eval.json").read_text())["timesteps"] == 512
    assert release_idle_workers() == 1
    assert workers_gone(third_dir) and workers_gone(first_dir)


def test_workers_started_ahead_of_the_trials_are_handed_them_and_the_unused_ones_released(tmp_path: Path,
                                                                                          mlflow_uri: str) -> None:
    import backends
    from backends.local import release_idle_workers
    from backends.local.backend import _starting
    from gymflow.procs import pid_alive

    spec = _spec(tmp_path, seed=4, backend={"kind": "local", "reuse_workers_s": 60})
    backend = backends.create(spec)
    assert backend.prestart(2) == 2
    prestarted = set(_starting)
    state = _run(spec)  # its setup waits for a prestarted worker to finish starting rather than start a third
    assert state.is_completed(), state.message
    run_dir = Path(spec.storage)
    pid = int((run_dir / "worker-train.pid").read_text())
    assert pid in prestarted and len(prestarted) == 2
    assert "handed the next trial" in (run_dir / "worker-train.out").read_text()
    assert json.loads((run_dir / "eval.json").read_text())["timesteps"] == 512
    assert pid_alive(pid)  # back in the pool, next to the one that was never needed
    assert release_idle_workers() == 2
    assert not pid_alive(pid) and workers_gone(run_dir)
    unpooled = backends.create(_spec(tmp_path, seed=5))
    assert unpooled.prestart(2) == 0  # workers that are not reused are not started ahead either


def test_a_waiting_worker_that_was_not_claimed_in_time_gives_up_and_the_phase_starts_a_fresh_one(make_run: Any) -> None:
    import backends
    from gymflow import config
    from backends.local.serve import STANDBY_FILE, WAITING_FILE, wait_to_be_claimed

    store = make_run(base_spec(budget={"timesteps": 128}, evaluation={"every_timesteps": None, "episodes": 1}))
    assert wait_to_be_claimed(store, WAITING_FILE, 0.3) is False and not (store.workdir / WAITING_FILE).exists()
    spec = config.resolve(store.read_json("spec.json"))
    backend = backends.create(spec)
    handle = backend.plan(spec)
    (store.workdir / "worker-train.pid").write_text(str(os.getpid()))  # a live process that is not waiting
    (store.workdir / STANDBY_FILE).write_text("1")  # a marker left by another process
    assert backend._claim(handle, STANDBY_FILE, 0.2) is None
    assert (store.workdir / STANDBY_FILE).exists()  # not someone else's to claim


def test_a_worker_started_in_setup_is_claimed_by_the_train_phase_and_stopped_by_teardown(make_run: Any) -> None:
    import backends
    from gymflow import config
    from gymflow.procs import pid_alive

    store = make_run(base_spec(budget={"timesteps": 128}, evaluation={"every_timesteps": None, "episodes": 1}))
    spec = config.resolve(store.read_json("spec.json"))
    backend = backends.create(spec)
    handle = backend.plan(spec)
    backend.setup(handle, spec)
    prestarted = handle.data["train"]["pid"]
    backend.launch(handle, "train")
    assert handle.data["train"] == {"pid": prestarted, "warm": True}
    deadline = time.monotonic() + 120
    while backend.poll(handle, "train").running and time.monotonic() < deadline:
        time.sleep(0.2)
    assert json.loads((store.workdir / "status.json").read_text())["timesteps"] == 128
    assert pid_alive(prestarted)  # standing by for evaluate
    backend.teardown(handle)
    assert workers_gone(store.workdir)

    handle = backend.plan(spec)  # a setup whose trial then fails: teardown stops the waiting worker
    backend.setup(handle, spec)
    backend.teardown(handle)
    assert workers_gone(store.workdir)


@pytest.mark.usefixtures("prefect_server")
def test_training_metrics_reach_mlflow_while_the_worker_still_runs(tmp_path: Path, mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    spec = _spec(tmp_path, budget={"timesteps": 30000}, evaluation={"every_timesteps": 5000, "episodes": 1},
                 algorithm={"name": "ppo", "hyperparams": {"n_steps": 64, "batch_size": 128, "n_epochs": 1}})
    holder: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: holder.setdefault("state", _run(spec)))
    thread.start()
    client, seen_while_running = MlflowClient(mlflow_uri), 0
    deadline = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline:
        status_file = Path(spec.storage) / "status.json"
        running = status_file.exists() and json.loads(status_file.read_text()).get("state") == "running"
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1)
        if running and runs:
            points = client.get_metric_history(runs[0].info.run_id, "rollout/ep_rew_mean")
            seen_while_running = max(seen_while_running, len(points))
        time.sleep(0.5)
    thread.join()
    assert holder["state"].is_completed()
    assert seen_while_running >= 5


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(("fail_in", "message"), [
    ("setup", "could not prepare the worker image"),
    ("train", "simulator diverged"),
    ("evaluate", "the evaluate worker failed"),
    ("store", "artifact store unavailable"),
])
def test_failure_in_any_phase_still_tears_down_and_keeps_the_original_error(
        fail_in: str, message: str, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides: dict[str, Any] = {"backend": {"kind": "fault_backends:FaultyBackend", "fail_in": "" if fail_in in ("train", "store") else fail_in}}
    if fail_in == "train":
        overrides["env"] = {"id": "sim_envs:ExplodingEnv", "kwargs": {"fail_after": 100}}
    if fail_in == "store":
        from gymflow.tracking import Tracker

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("artifact store unavailable")

        monkeypatch.setattr(Tracker, "log_artifacts", broken)
    spec = _spec(tmp_path, **overrides)
    state = _run(spec)
    assert state.is_failed()
    assert message in state.message or message in str(state.result(raise_on_failure=False))
    run_dir = Path(spec.storage)
    assert _teardowns(run_dir) == 1
    assert workers_gone(run_dir)
    runs = _task_runs(state.state_details.flow_run_id)
    assert runs["teardown"] == ["COMPLETED"] and runs[fail_in] == ["FAILED"]


@pytest.mark.usefixtures("prefect_server")
def test_transient_provision_error_is_retried_and_the_trial_succeeds(tmp_path: Path, mlflow_uri: str) -> None:
    spec = _faulty(tmp_path, transient_failures=1)
    state = _run(spec)
    assert state.is_completed(), state.message
    calls = (Path(spec.storage) / "provision_calls.jsonl").read_text().splitlines()
    assert len(calls) == 2


@pytest.mark.usefixtures("prefect_server")
def test_config_error_in_provision_is_not_retried(tmp_path: Path, mlflow_uri: str) -> None:
    spec = _faulty(tmp_path, fail_in="provision")
    state = _run(spec)
    assert state.is_failed() and "machine type 'n9-huge' does not exist" in str(state.result(raise_on_failure=False))
    assert len((Path(spec.storage) / "provision_calls.jsonl").read_text().splitlines()) == 1
    assert _teardowns(Path(spec.storage)) == 1


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(("fault", "message"), [
    ("hang", "the train worker wrote no status within 3 s of its launch (the backend's start-up grace); it is presumed lost"),
    ("stall", "the train worker's heartbeat has not advanced for"),
])
def test_lost_heartbeat_fails_the_train_task_and_kills_the_worker(fault: str, message: str, tmp_path: Path,
                                                                  mlflow_uri: str) -> None:
    spec = _faulty(tmp_path, fail_in=fault, heartbeat_timeout_s=3, startup_grace_s=3)
    state = _run(spec)
    assert state.is_failed()
    assert message in str(state.result(raise_on_failure=False))
    assert workers_gone(Path(spec.storage)) and _teardowns(Path(spec.storage)) == 1


@pytest.mark.usefixtures("prefect_server")
def test_a_slow_start_within_the_grace_is_not_a_lost_heartbeat(tmp_path: Path, mlflow_uri: str) -> None:
    """A worker may take longer to start than its heartbeat timeout (a VM boots for minutes): the backend's
    start-up grace covers that, and only a heartbeat that stops advancing afterwards counts."""
    spec = _faulty(tmp_path, fail_in="slow", slow_start_s=15, heartbeat_timeout_s=12, startup_grace_s=60)
    state = _run(spec)
    assert state.is_completed(), state.message


@pytest.mark.usefixtures("prefect_server")
def test_a_worker_whose_clock_is_hours_behind_is_followed_to_the_end(tmp_path: Path, mlflow_uri: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Another machine's clock is never compared with ours: the worker's timestamps only have to change."""
    skew = tmp_path / "skewed-clock"
    skew.mkdir()
    (skew / "sitecustomize.py").write_text("import time\n_real = time.time\ntime.time = lambda: _real() - 7200.0\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(skew), os.environ.get("PYTHONPATH", "")]))
    spec = _spec(tmp_path, backend={"kind": "local", "warm_evaluate_s": 0})
    state = _run(spec)
    assert state.is_completed(), state.message
    status = json.loads((Path(spec.storage) / "status.json").read_text())
    assert status["heartbeat_at"] < time.time() - 3600  # the worker really lived two hours ago


@pytest.mark.usefixtures("prefect_server")
def test_cancelling_a_running_trial_stops_the_worker_and_tears_down(tmp_path: Path, mlflow_uri: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.states import Cancelling

    from flows.trial import run_name

    spec = _faulty(tmp_path)
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"timesteps": 200_000})})
    holder: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: holder.setdefault("state", _run(spec)))
    thread.start()
    status_file = Path(spec.storage) / "status.json"
    deadline = time.monotonic() + 120
    while not (status_file.exists() and json.loads(status_file.read_text()).get("state") == "running"):
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.2)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name(spec)])))
        running = [r for r in runs if not r.state.is_final()]
        client.set_flow_run_state(running[0].id, Cancelling(), force=True)
    thread.join(120)
    state = holder["state"]
    assert state.is_cancelled()
    run_dir = Path(spec.storage)
    assert workers_gone(run_dir) and _teardowns(run_dir) == 1
    assert json.loads(status_file.read_text())["state"] == "interrupted"  # the worker checkpointed on its way out


@pytest.mark.usefixtures("prefect_server")
def test_unknown_backend_is_a_spec_error_before_anything_runs(tmp_path: Path, cli: Any, write_spec: Any) -> None:
    result = cli("run", write_spec(base_spec(backend={"kind": "lokal"})))
    assert result.code == 2
    assert "backend.kind: unknown backend 'lokal'. Did you mean 'local'? Registered: azure, gcp, local" in result.stderr
    assert not (tmp_path / "runs").exists()
