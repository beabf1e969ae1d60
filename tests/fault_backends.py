"""A backend for tests: the local backend with failures injected on request, and a teardown record.

Besides its settings (the same in every run of a trial), a fault can be injected into one process's run through
GYMFLOW_TEST_FAULT=KIND@PHASE[,PHASE...], for the fault table of tests/test_fault_table.py:
- raise: the backend raises a BackendError (not transient: never retried), once per process;
- kill-orchestrator: the orchestrating process SIGKILLs itself (no flow code runs after it);
- kill-worker: the phase's worker processes are SIGKILLed;
- pause: the phase waits, with `fault-paused-PHASE` in the run dir, until the test writes `fault-resume-PHASE`.
Faults fire in provision (after the provision), setup (the train worker started), train and evaluate (the worker
running its phase), store (as the MLflow artifacts are read) and teardown (before anything is torn down).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from backends.base import BackendError, Handle, Phase, TransientBackendError, WorkerState
from backends.gcp.backend import GcpBackend
from backends.gcp.settings import GcpBackendSpec
from backends.local import LocalBackend
from backends.local.backend import _folder, _processes
from gymflow.spec import Spec


class FaultySettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    fail_in: Literal["", "provision", "setup", "evaluate", "hang", "stall", "slow"] = ""
    transient_failures: int = 0
    heartbeat_timeout_s: float = 120.0
    startup_grace_s: float = 120.0
    slow_start_s: float = 0.0


class FaultyBackend(LocalBackend):
    """LocalBackend that fails where told and records each teardown in the run dir."""

    name: ClassVar[str] = "faulty"
    Settings = FaultySettings

    def __init__(self, settings: FaultySettings) -> None:
        super().__init__(settings)
        self.provision_calls = 0

    def _provision(self, spec: Spec) -> Handle:
        self.provision_calls += 1
        handle = super()._provision(spec)
        _append(Path(handle.run_uri) / "provision_calls.jsonl", {"call": self.provision_calls})
        _inject(handle, "provision")
        if self.settings.transient_failures >= self.provision_calls:
            raise TransientBackendError("quota temporarily exceeded (429)")
        if self.settings.fail_in == "provision":
            raise BackendError("machine type 'n9-huge' does not exist")
        return handle

    def _setup(self, handle: Handle, spec: Spec) -> None:
        super()._setup(handle, spec)  # the train worker is started, so a failing setup must stop it
        _inject(handle, "setup")
        if self.settings.fail_in == "setup":
            raise BackendError("could not prepare the worker image")

    def _launch(self, handle: Handle, phase: Phase) -> dict[str, Any]:
        if self.settings.fail_in == "evaluate" and phase == "evaluate":
            (Path(handle.run_uri) / "model.zip").unlink()  # the worker then fails for real
        if self.settings.fail_in in ("hang", "stall", "slow") and phase == "train":
            self._stop(handle, "train")  # the worker started in setup is replaced by one that hangs, stalls or is slow
            return self._replace(handle, phase, _REPLACEMENTS[self.settings.fail_in].format(
                run=handle.run_uri, delay=self.settings.slow_start_s))
        return super()._launch(handle, phase)

    def _replace(self, handle: Handle, phase: Phase, code: str) -> dict[str, Any]:
        proc = subprocess.Popen([sys.executable, "-c", code, "worker", handle.run_uri], start_new_session=True)
        _processes[proc.pid] = proc
        (Path(handle.run_uri) / f"worker-{phase}.pid").write_text(str(proc.pid))
        return {"pid": proc.pid}

    def _poll(self, handle: Handle, phase: Phase) -> WorkerState:
        state = super()._poll(handle, phase)
        if state.running and _working(handle, phase):
            _inject(handle, phase)
        return state

    def store(self, handle: Handle) -> Any:
        from prefect.context import TaskRunContext

        context = TaskRunContext.get()
        if context is not None and context.task.name == "store":
            _inject(handle, "store")
        return super().store(handle)

    def _teardown(self, handle: Handle) -> None:
        _inject(handle, "teardown")
        super()._teardown(handle)
        _append(Path(handle.run_uri) / "teardown.jsonl", {"provisioned": handle.provisioned, "data": handle.data})


_REPLACEMENTS = {
    # writes nothing, ever
    "hang": "import time; time.sleep(600)",
    # writes one running status of the train phase, then its heartbeat stands still
    "stall": ("import json, os, time; json.dump({{'state': 'running', 'phase': 'train', 'started_at': time.time(), "
              "'heartbeat_at': time.time(), 'pid': os.getpid()}}, open({run!r} + '/status.json', 'w')); time.sleep(600)"),
    # the real worker, after a slow start (a VM booting, a job queued)
    "slow": ("import runpy, sys, time; time.sleep({delay}); sys.argv = ['gymflow', 'worker', 'train', {run!r}]; "
             "runpy.run_module('gymflow', run_name='__main__')"),
}


FAULT_ENV = "GYMFLOW_TEST_FAULT"
_fired: set[tuple[str, str]] = set()


def _working(handle: Handle, phase: Phase) -> bool:
    """The worker has begun this phase's work: a checkpoint written in training, or the evaluation under way."""
    try:
        status = json.loads((_folder(handle.run_uri) / "status.json").read_text())
    except (OSError, ValueError):
        return False
    if status.get("phase") != phase or status.get("state") != "running":
        return False
    return phase != "train" or any((_folder(handle.run_uri) / "checkpoints").glob("*/meta.json"))  # trained a while


def _inject(handle: Handle, phase: Phase | str) -> None:
    """The fault GYMFLOW_TEST_FAULT asks for in this phase, once per process."""
    kind, _, phases = os.environ.get(FAULT_ENV, "").partition("@")
    if phase not in phases.split(",") or (kind, phase) in _fired:
        return
    _fired.add((kind, phase))
    run_dir = _folder(handle.run_uri)
    _append(run_dir / "faults.jsonl", {"kind": kind, "phase": phase, "pid": os.getpid(), "at": time.time()})
    if kind == "raise":
        raise BackendError(f"injected failure in {phase}")
    if kind == "kill-orchestrator":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "kill-worker":
        for pid_file in run_dir.glob("worker-*.pid"):
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
    if kind == "pause":
        _pause(run_dir, phase)


def _pause(folder: Path, phase: str) -> None:
    """Wait, with `fault-paused-PHASE` in folder, until the test writes `fault-resume-PHASE` there (5 min at most)."""
    (folder / f"fault-paused-{phase}").touch()
    deadline = time.monotonic() + 300
    while not (folder / f"fault-resume-{phase}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


class FaultyGcpSettings(GcpBackendSpec):
    kind: str = "faulty-gcp"  # type: ignore[assignment]  # named by its import path in the spec


class FaultyGcpBackend(GcpBackend):
    """The gcp backend with GYMFLOW_TEST_FAULT=raise@PHASE (a BackendError in that phase) or pause@PHASE (the phase
    waits, its markers in GYMFLOW_TEST_FAULT_DIR: the run dir is in a bucket), with the trial's VM up: provision
    after creating it; train and evaluate once the phase's launch runs on the VM."""

    name: ClassVar[str] = "faulty-gcp"
    Settings = FaultyGcpSettings

    def _provision(self, spec: Spec) -> Handle:
        handle = super()._provision(spec)
        _fault_in("provision")
        return handle

    def _setup(self, handle: Handle, spec: Spec) -> None:
        super()._setup(handle, spec)
        _fault_in("setup")

    def _poll(self, handle: Handle, phase: Phase) -> WorkerState:
        state = super()._poll(handle, phase)
        if state.running:
            _fault_in(phase)
        return state

    def store(self, handle: Handle) -> Any:
        from prefect.context import TaskRunContext

        context = TaskRunContext.get()
        if context is not None and context.task.name == "store":
            _fault_in("store")
        return super().store(handle)

    def _teardown(self, handle: Handle) -> None:
        _fault_in("teardown")
        super()._teardown(handle)


def _fault_in(phase: str) -> None:
    kind, _, phases = os.environ.get(FAULT_ENV, "").partition("@")
    if phase not in phases.split(",") or (kind, phase) in _fired:
        return
    _fired.add((kind, phase))
    if kind == "raise":
        raise BackendError(f"injected failure in {phase}")
    if kind == "pause":
        _pause(Path(os.environ["GYMFLOW_TEST_FAULT_DIR"]), phase)
