"""The worker's agent (gymflow/agent.py): phases handed over through the run dir, as a cloud VM gets them.

The agent runs as `gymflow worker agent RUN_URI` in its own process, as a VM's startup script starts it; the test
plays the orchestrator through the run dir only, on a local folder and on a bucket (fake-gcs-server).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import base_spec
from gymflow import agent
from gymflow.results import EVAL_FILE
from gymflow.storage import RunStore, open_run
from prefect_stack import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(params=["local", "gs"])
def store(request: pytest.FixtureRequest, tmp_path: Any, make_run: Callable[..., RunStore]) -> RunStore:
    root = str(tmp_path / "runs") if request.param == "local" else request.getfixturevalue("gs_bucket")
    return make_run(base_spec(budget={"timesteps": 512}, storage=f"{root}/${{trial_id}}"))


@pytest.fixture
def serving(store: RunStore) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "gymflow", "worker", "agent", store.uri, "--poll-s", "0.2",
                             "--idle-exit-s", "120"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    yield proc
    proc.kill()
    proc.wait()


def _until(store: RunStore, seq: int, state: str, seconds: float = 180) -> agent.PhaseState:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = agent.phase_state(store, seq)
        if found is not None and found.state == state:
            return found
        time.sleep(0.2)
    raise AssertionError(f"launch {seq} never {state}: {agent.phase_state(store, seq)}")


def test_the_agent_runs_train_then_evaluate_as_launched(store: RunStore, serving: subprocess.Popen[bytes]) -> None:
    assert agent.next_seq(store) == 1
    agent.request_launch(store, 1, "train")
    assert agent.next_seq(store) == 2
    with pytest.raises(FileExistsError):
        agent.request_launch(store, 1, "train")  # a launch is requested once
    running = _until(store, 1, "running")
    assert running.phase == "train" and running.pid
    done = _until(store, 1, "exited")
    assert done.exit_code == 0 and store.read_json("status.json")["timesteps"] == 512
    agent.request_launch(store, 2, "evaluate")
    assert _until(store, 2, "exited").exit_code == 0
    assert store.read_json(EVAL_FILE)["n_episodes"] >= 1
    assert store.exists("worker-train.out") and store.exists("worker-evaluate.out")


def test_a_stop_request_makes_the_worker_checkpoint_and_exit(store: RunStore, make_run: Callable[..., RunStore],
                                                            serving: subprocess.Popen[bytes]) -> None:
    spec = store.read_json("spec.json")
    spec["budget"] = {"timesteps": 200_000}  # far more than the test waits for
    store.write_json("spec.json", spec)
    agent.request_launch(store, 1, "train")
    _until(store, 1, "running")
    deadline = time.monotonic() + 120
    while not store.list("checkpoints/"):
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.2)
    agent.request_stop(store, 1)
    done = _until(store, 1, "exited", 90)
    assert done.exit_code == 130  # the worker's own exit code for an interrupted phase
    status = store.read_json("status.json")
    assert status["state"] == "interrupted" and status["stop_reason"] == "SIGTERM"


def test_a_restarted_agent_goes_on_after_the_last_launch_it_reported(tmp_path: Any, make_run: Callable[..., RunStore]) -> None:
    store = open_run(str(tmp_path / "run"))
    store.write_json("agent/state-1.json", agent.PhaseState(seq=1, phase="train", state="running", pid=1).model_dump())
    assert agent._first_unreported(store) == 2  # launch 1 was running when the old agent went: reported as killed
    lost = agent.phase_state(store, 1)
    assert lost is not None and lost.state == "exited" and lost.exit_code == -9
