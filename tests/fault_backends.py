"""A backend for tests: the local backend with failures injected on request, and a teardown record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from backends.base import BackendError, Handle, Phase, TransientBackendError
from backends.local import LocalBackend
from backends.local.backend import _processes
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
        if self.settings.transient_failures >= self.provision_calls:
            raise TransientBackendError("quota temporarily exceeded (429)")
        if self.settings.fail_in == "provision":
            raise BackendError("machine type 'n9-huge' does not exist")
        return handle

    def _setup(self, handle: Handle, spec: Spec) -> None:
        super()._setup(handle, spec)  # the train worker is started, so a failing setup must stop it
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

    def _teardown(self, handle: Handle) -> None:
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


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
