"""Deployments, schedules and alerts against a real `prefect server start`, a process work pool and worker.

The module's stack runs `prefect deploy --all` from the repository root (its prefect.yaml links to
deployments/prefect.yaml), as a user does; flow runs are started with `prefect deployment run`.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import base_spec, workers_gone
from prefect_stack import Stack, prefect_stack
from webhook import receiver, wait_for

pytestmark = pytest.mark.slow

PHASES = ["provision", "setup", "train", "evaluate", "store", "teardown"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("prefect-stack")
    with prefect_stack(folder) as running:
        deployed = running.prefect("deploy", "--all")  # from the repository root, as a user does
        assert "trial/nightly-cartpole" in deployed.stdout and "gc/gc-gcp" in deployed.stdout and "gc/gc-azure" in deployed.stdout
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        running.start_worker()
        yield running


def _api(stack: Stack, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{stack.api_url}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _deployment(stack: Stack, name: str) -> dict[str, Any]:
    flow, _, deployment = name.partition("/")
    return _api(stack, "GET", f"/deployments/name/{flow}/{deployment}")


def _flow_runs(stack: Stack, deployment_id: str, states: list[str] | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "START_TIME_DESC"}
    if states:
        body["flow_runs"] = {"state": {"type": {"any_": states}}}
    return _api(stack, "POST", "/flow_runs/filter", body)


def _run_deployment(stack: Stack, name: str, **params: Any) -> subprocess.CompletedProcess[str]:
    args = ["deployment", "run", name, "--watch", "--watch-timeout", "500"]
    for key, value in params.items():
        args += ["--param", f"{key}={json.dumps(value)}"]
    return stack.prefect(*args, timeout=560)


def test_deploy_all_then_a_run_with_a_parameter_override_completes_all_six_phases(stack: Stack, tmp_path: Path) -> None:
    storage = str(tmp_path / "runs" / "${trial_id}")
    overrides = ["budget.timesteps=2048", "evaluation.every_timesteps=1024", "env.n_envs=4",
                 f"storage={storage}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    started = time.time()
    run = _run_deployment(stack, "trial/cartpole", overrides=overrides)
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr

    deployment = _deployment(stack, "trial/cartpole")
    flow_run = _flow_runs(stack, deployment["id"], ["COMPLETED"])[0]
    assert flow_run["parameters"]["overrides"] == overrides
    assert flow_run["parameters"]["spec_file"] == "examples/cartpole-ppo.yaml"  # the deployment's default, kept
    assert flow_run["name"].startswith("cartpole-ppo-ppo-cartpole-v1-seed0-")
    task_runs = _api(stack, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    assert sorted(t["name"] for t in task_runs) == sorted(PHASES)
    assert all(t["state"]["type"] == "COMPLETED" for t in task_runs)

    # the expected result: the override's budget was trained and evaluated, in the overridden place
    (eval_file,) = (tmp_path / "runs").glob("*/eval.json")
    report = json.loads(eval_file.read_text())
    assert report["timesteps"] == 2048 and len(report["episodes"]) == 10
    event = _events(stack, "gymflow.trial.completed", since=started)[0]
    assert event["payload"]["timesteps"] == 2048
    assert event["payload"]["mean_reward"] == pytest.approx(report["mean_reward"])
    assert event["payload"]["experiment"] == "cartpole-ppo" and event["payload"]["trial_id"] == eval_file.parent.name


def test_the_nightly_deployment_has_its_upcoming_runs_created_by_the_server(stack: Stack) -> None:
    deployment = _deployment(stack, "trial/nightly-cartpole")
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]
    assert deployment["parameters"]["overrides"] == ["budget.timesteps=50000", "name=nightly-cartpole"]
    deadline = time.monotonic() + 60
    while not (scheduled := _flow_runs(stack, deployment["id"], ["SCHEDULED"])) and time.monotonic() < deadline:
        time.sleep(1)
    assert scheduled, "the scheduler created no runs"
    times = sorted(r["next_scheduled_start_time"] for r in scheduled)
    assert all(t.endswith("03:00:00Z") or "T03:00:00" in t for t in times)


def test_the_sweep_deployment_takes_an_inline_spec_from_the_form(stack: Stack, tmp_path: Path) -> None:
    spec = _small_sweep(tmp_path, "inline-sweep")
    run = _run_deployment(stack, "sweep/cartpole-sweep", spec=spec, spec_file=None, runner="threads")
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
    assert len(list((tmp_path / "runs").rglob("eval.json"))) == 2


# --- alerts ---------------------------------------------------------------------------------


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with receiver() as hook:
        yield hook


def test_a_failed_trial_and_a_completed_sweep_each_send_one_alert(stack: Stack, tmp_path: Path,
                                                                   webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    applied = stack.gymflow("alerts", "apply", "--webhook", url)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("automation gymflow:") == 3

    failing = base_spec(name="exploding", env={"id": "sim_envs:ExplodingEnv", "kwargs": {"fail_after": 300}, "n_envs": 1},
                        storage=str(tmp_path / "runs" / "${trial_id}"), tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    spec_file = tmp_path / "exploding.yaml"
    spec_file.write_text(yaml.safe_dump(failing))
    run = _run_deployment(stack, "trial/cartpole", spec_file=str(spec_file))
    assert run.returncode != 0 and "Failed" in run.stdout
    wait_for(received, 1)
    assert len(received) == 1, received
    (trial_dir,) = (tmp_path / "runs").iterdir()
    alert = received[0]
    assert alert["subject"] == "gymflow: trial of exploding failed"
    body = alert["body"]
    assert "experiment: exploding" in body and f"trial: {trial_dir.name}" in body
    assert "outcome: failed" in body and "mean reward: none" in body and "simulator diverged" in body

    run = _run_deployment(stack, "sweep/cartpole-sweep", spec_file=str(_sweep_file(tmp_path)))
    assert run.returncode == 0, run.stdout + run.stderr
    wait_for(received, 2)
    assert len(received) == 2, received
    alert = received[1]
    assert alert["subject"] == "gymflow: sweep alerted-sweep completed"
    assert "outcome: completed, 2 trials, 0 failed" in alert["body"]
    mean = float(alert["body"].split("mean reward: ")[1].split()[0])
    assert mean > 0


def _small_sweep(tmp_path: Path, name: str) -> dict[str, Any]:
    return base_spec(name=name, storage=str(tmp_path / "runs" / "${trial_id}"),
                     tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"}, sweep={"seeds": [0, 1], "max_parallel": 2})


def _sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_small_sweep(tmp_path, "alerted-sweep")))
    return path


def _events(stack: Stack, name: str, since: float) -> list[dict[str, Any]]:
    from datetime import datetime, timezone

    body = {"filter": {"event": {"name": [name]}, "occurred": {"since": datetime.fromtimestamp(since, timezone.utc).isoformat()}},
            "limit": 10}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _api(stack, "POST", "/events/filter", body)["events"]
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"no {name} event")


def _flow_run_pid(flow_run_id: str) -> int | None:
    """The process running a flow run: the process worker gives it PREFECT__FLOW_RUN_ID."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                return int(environ.parent.name)
        except OSError:
            continue
    return None


def _wait_for_training(runs: Path, timeout: float = 120) -> None:
    """Until a trial's worker has written its first training metrics."""
    deadline = time.monotonic() + timeout
    while not any(path.stat().st_size for path in runs.glob("*/metrics/train.jsonl")):
        assert time.monotonic() < deadline, f"no training metrics under {runs} after {timeout:.0f} s"
        time.sleep(0.5)


def test_a_crashed_trial_sends_one_alert_and_leaves_no_worker_running(stack: Stack, tmp_path: Path,
                                                                       webhook: tuple[str, list[dict[str, Any]]]) -> None:
    import os
    import signal

    url, received = webhook
    assert stack.gymflow("alerts", "apply", "--webhook", url).returncode == 0
    spec = base_spec(name="crashing", budget={"timesteps": 200_000}, storage=str(tmp_path / "runs" / "${trial_id}"),
                     tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    spec_file = tmp_path / "crashing.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    started = stack.prefect("deployment", "run", "trial/cartpole", "--param", f"spec_file={json.dumps(str(spec_file))}")
    flow_run_id = started.stdout.split("UUID:")[1].split()[0]
    _wait_for_training(tmp_path / "runs")
    pid = _flow_run_pid(flow_run_id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the orchestrating process dies: no flow code runs after this

    wait_for(received, 1)
    assert len(received) == 1, received
    alert = received[0]
    assert alert["subject"].startswith("gymflow: trial crashing-ppo-cartpole-v1-seed0-") and alert["subject"].endswith(" crashed")
    assert "outcome: crashed" in alert["body"] and f"'spec_file': '{spec_file}'" in alert["body"]
    (run_dir,) = (tmp_path / "runs").iterdir()
    deadline = time.monotonic() + 30
    while not workers_gone(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert workers_gone(run_dir), "the training worker outlived its orchestrator"
