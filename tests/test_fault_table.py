"""The fault table: each phase × {exception, SIGKILL of the orchestrator, SIGKILL of the worker, Prefect server restart}.

Every cell ends the same way: nothing left running, the records true (no flow run left Running, one MLflow run for
the trial, ended), and the trial completed to exactly its budget — by the faulted run itself where the fault is one
it rides out, else by a rerun of the same spec. `gymflow run` runs as a user starts it (a subprocess against a real
Prefect server); faults are injected by tests/fault_backends.py (GYMFLOW_TEST_FAULT). The worker column has three
cells: in provision, store and teardown no worker runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import base_spec, workers_gone
from prefect_stack import ROOT, Stack
from records import flow_runs, mlflow_runs, task_runs

pytestmark = pytest.mark.slow

BUDGET = 2048
PHASES = ["provision", "setup", "train", "evaluate", "store", "teardown"]


@pytest.fixture
def stack(run_stack: Stack) -> Stack:
    return run_stack


def _spec(folder: Path) -> Path:
    spec = base_spec(name="faults", budget={"timesteps": BUDGET}, storage=str(folder / "run"),
                     backend={"kind": "fault_backends:FaultyBackend"},
                     evaluation={"every_timesteps": 1024, "episodes": 2}, checkpoint={"every_timesteps": 512})
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _env(stack: Stack, folder: Path, fault: str | None = None) -> dict[str, str]:
    env = {**stack.env, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "GYMFLOW_HOME": str(folder / "home")}
    if fault:
        env["GYMFLOW_TEST_FAULT"] = fault
    return env


def _gymflow_run(stack: Stack, folder: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gymflow", "run", str(folder / "spec.yaml")], cwd=ROOT,
                          env=_env(stack, folder, fault), capture_output=True, text=True, timeout=600)


def _faults(run: Path) -> list[dict[str, Any]]:
    path = run / "faults.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_workers_gone(run: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not workers_gone(run):
        assert time.monotonic() < deadline, f"a worker of {run} still runs"
        time.sleep(0.2)


def _assert_completed_and_true(stack: Stack, folder: Path, output: str) -> list[Any]:
    """The trial is done to exactly its budget and every record says so; the flow runs, oldest first."""
    from gymflow.runtime.metrics import read_jsonl

    run = folder / "run"
    _wait_workers_gone(run)
    flows = flow_runs(stack, run)
    assert flows and flows[-1].state.type.value == "COMPLETED", [f.state for f in flows]
    assert all(f.state.is_final() for f in flows), [f.state for f in flows]  # nothing shown Running for ever
    (record,) = mlflow_runs(f"sqlite:///{folder}/mlflow.db")  # one trial, one MLflow run
    assert record.info.status == "FINISHED"
    report = json.loads((run / "eval.json").read_text())
    assert report["trained_timesteps"] == BUDGET
    assert json.loads((run / "status.json").read_text())["timesteps"] == BUDGET
    steps = [r["timesteps"] for r in read_jsonl(run / "metrics" / "train.jsonl") if "time/fps" in r]
    assert steps == sorted(set(steps)) and 0 < steps[-1] <= BUDGET, steps  # one curve, no step twice
    assert json.loads((run / "owner.json").read_text())["released_at"] is not None
    assert f"trained {BUDGET} timesteps" in output
    return flows


def test_an_exception_in_each_phase_in_turn(stack: Stack, tmp_path: Path) -> None:
    """A run fails in provision, its rerun in setup, that one's rerun in train, …: each fails with the error named,
    torn down; the next gets past the phase (and resumes what was trained). A failing teardown task is done directly."""
    run = tmp_path / "run"
    _spec(tmp_path)
    for n, phase in enumerate(PHASES[:-1], start=1):
        failed = _gymflow_run(stack, tmp_path, f"raise@{phase}")
        said = failed.stdout + failed.stderr
        assert failed.returncode == 1, said
        assert f"failed: injected failure in {phase}" in said and "Traceback" not in said.split("failed:")[-1]
        assert [f["phase"] for f in _faults(run)] == PHASES[:n]
        assert len((run / "teardown.jsonl").read_text().splitlines()) == n  # torn down after each failure
        _wait_workers_gone(run)
        assert [f.state.type.value for f in flow_runs(stack, run)] == ["FAILED"] * n
        assert all(r.info.status == "FAILED" for r in mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db"))
    last = _gymflow_run(stack, tmp_path, "raise@teardown")
    said = last.stdout + last.stderr
    assert last.returncode == 0, said
    assert "the teardown task did not complete; tearing down directly" in said
    assert len((run / "teardown.jsonl").read_text().splitlines()) == len(PHASES)
    flows = _assert_completed_and_true(stack, tmp_path, said)
    assert [f.state.type.value for f in flows] == ["FAILED"] * (len(PHASES) - 1) + ["COMPLETED"]
    assert task_runs(stack, flows[-1].id)["teardown"] == ["FAILED"]


def test_the_orchestrator_killed_in_each_phase_in_turn(stack: Stack, tmp_path: Path) -> None:
    """One run killed in provision, its rerun killed in setup, that one's rerun in train, … then a rerun completes:
    each rerun takes over from the dead run, marks it Crashed, and gets past the phase it died in."""
    run = tmp_path / "run"
    _spec(tmp_path)
    for n, phase in enumerate(PHASES, start=1):
        killed = _gymflow_run(stack, tmp_path, f"kill-orchestrator@{phase}")
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert [f["phase"] for f in _faults(run)] == PHASES[:n]
        flows = flow_runs(stack, run)
        assert [f.state.type.value for f in flows] == ["CRASHED"] * (n - 1) + ["RUNNING"]  # until the next run looks
    last = _gymflow_run(stack, tmp_path)
    said = last.stdout + last.stderr
    assert last.returncode == 0, said
    assert "the previous run of this trial died" in said
    flows = _assert_completed_and_true(stack, tmp_path, said)
    assert [f.state.type.value for f in flows] == ["CRASHED"] * len(PHASES) + ["COMPLETED"]
    assert all("died; trial taken over by a new run" in (f.state.message or "") for f in flows[:-1])


def test_the_worker_killed_in_each_phase_that_has_one(stack: Stack, tmp_path: Path) -> None:
    """Killed in train: the run fails naming the signal, and says a rerun resumes; the rerun's worker killed in
    evaluate: the same; the next run's waiting train worker killed in setup: the train phase starts a fresh one and completes."""
    run = tmp_path / "run"
    _spec(tmp_path)
    for n, phase in enumerate(["train", "evaluate"], start=1):
        failed = _gymflow_run(stack, tmp_path, f"kill-worker@{phase}")
        said = failed.stdout + failed.stderr
        assert failed.returncode == 1, said
        assert f"failed: the {phase} worker was killed by SIGKILL (exit code -9) in state 'running'" in said
        assert "\nRun the same spec again to resume from its checkpoint at " in said, said[-3000:]
        assert [f["phase"] for f in _faults(run)] == ["train", "evaluate"][:n]
        _wait_workers_gone(run)
    last = _gymflow_run(stack, tmp_path, "kill-worker@setup")
    said = last.stdout + last.stderr
    assert last.returncode == 0, said
    assert [f["phase"] for f in _faults(run)] == ["train", "evaluate", "setup"]
    flows = _assert_completed_and_true(stack, tmp_path, said)
    assert [f.state.type.value for f in flows] == ["FAILED", "FAILED", "COMPLETED"]


def test_the_prefect_server_restarted_in_each_phase(stack: Stack, tmp_path: Path) -> None:
    """One run; in each phase the server goes down, the phase goes on and calls it (the client retries while it
    is down), and the server comes back on the same database: the run completes, its flow run says so."""
    run = tmp_path / "run"
    _spec(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "gymflow", "run", str(tmp_path / "spec.yaml")], cwd=ROOT,
                            env=_env(stack, tmp_path, "pause@" + ",".join(PHASES)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    said = stack.restart_at_each(proc, run, PHASES)  # the phase goes on while the server is down
    assert proc.returncode == 0, said
    flows = _assert_completed_and_true(stack, tmp_path, said)
    assert [f.state.type.value for f in flows] == ["COMPLETED"]
    # task runs are recorded from Prefect's event stream; those a stopping server had not written are sent again
    # after the reconnection (flows/outages.py), so every phase has its one task run, completed
    assert task_runs(stack, flows[0].id) == {phase: ["COMPLETED"] for phase in PHASES}
