"""Backends are found by entry point or 'module:Class'; the local backend keeps its contract."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

import backends
from backends import registry
from backends.local import LocalBackend
from conftest import base_spec
from gymflow import config
from gymflow.errors import SpecError


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A third-party distribution on sys.path that registers a backend in the entry-point group."""
    site = tmp_path / "site"
    dist = site / "thirdparty_backend-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[gymflow.backends]\nthirdparty = fault_backends:FaultyBackend\nbroken = nosuchpkg.mod:Backend\n")
    monkeypatch.syspath_prepend(str(site))
    registry.reset()
    yield "thirdparty"
    registry.reset()


def test_entry_point_backends_are_listed_and_broken_ones_reported(installed_plugin: str, cli: Any) -> None:
    found = backends.available()
    assert found["local"] is LocalBackend
    assert found[installed_plugin].__name__ == "FaultyBackend"
    assert isinstance(found["broken"], str) and "ModuleNotFoundError" in found["broken"]
    result = cli("backends")
    assert result.code == 0
    assert "thirdparty" in result.stdout and "fault_backends:FaultyBackend" in result.stdout and "failed to load" in result.stdout


@pytest.mark.usefixtures("prefect_server", "mlflow_uri")
def test_a_trial_runs_on_an_installed_third_party_backend(installed_plugin: str, tmp_path: Path) -> None:
    from flows.trial import trial

    spec = config.resolve(base_spec(backend={"kind": installed_plugin}, storage=str(tmp_path / "run")))
    state = trial(spec, return_state=True)
    assert state.is_completed(), state.message
    assert (tmp_path / "run" / "teardown.jsonl").exists()  # the plugin's own hooks ran
    assert (tmp_path / "run" / "eval.json").exists()


def test_broken_plugin_named_by_the_spec_is_a_clear_error(installed_plugin: str) -> None:
    spec = config.resolve(base_spec(backend={"kind": "broken"}), deep=False)
    with pytest.raises(SpecError, match="backend 'broken' is installed but failed to load: ModuleNotFoundError"):
        backends.create(spec)


def test_teardown_is_idempotent_and_safe_before_provisioning(tmp_path: Path) -> None:
    spec = config.resolve(base_spec(storage=str(tmp_path / "run")), deep=False)
    backend = backends.create(spec)
    planned = backend.plan(spec)
    backend.teardown(planned)  # nothing provisioned yet
    backend.teardown(None)
    handle = backend.provision(spec)
    backend.teardown(handle)
    backend.teardown(handle)


def test_teardown_stops_a_running_worker_found_through_its_pid_file(tmp_path: Path) -> None:
    spec = config.resolve(base_spec(storage=str(tmp_path / "run"), budget={"timesteps": 10**6}), deep=False)
    backend = backends.create(spec)
    handle = backend.provision(spec)
    backend.setup(handle, spec)
    backend.launch(handle, "train")
    pid = handle.data["train"]["pid"]
    deadline = time.monotonic() + 60
    while not (tmp_path / "run" / "status.json").exists():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # A different orchestrator process knows only the planned handle; the pid file leads it to the worker.
    backend.teardown(backend.plan(spec))
    assert not backend.poll(handle, "train").running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_recycled_pid_in_a_stale_pid_file_is_left_alone(tmp_path: Path) -> None:
    spec = config.resolve(base_spec(storage=str(tmp_path / "run")), deep=False)
    backend = backends.create(spec)
    backend.provision(spec)
    (tmp_path / "run" / "worker-train.pid").write_text(str(os.getpid()))  # this pytest process is no worker
    backend.teardown(backend.plan(spec))  # must not signal us
    os.kill(os.getpid(), 0)  # still here
