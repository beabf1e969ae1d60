"""Shared fixtures: specs on disk, the CLI run in-process, run dirs made by setup."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

TESTS_DIR = Path(__file__).parent
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# what checks learn (algorithm signatures, build checks) is shared by the session's tests; each test has its own home
os.environ.setdefault("GYMFLOW_CACHE", tempfile.mkdtemp(prefix="gymflow-test-cache-"))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))


def base_spec(**overrides: Any) -> dict[str, Any]:
    """A small valid PPO CartPole spec; keyword arguments replace top-level sections."""
    spec: dict[str, Any] = {
        "name": "test",
        "env": {"id": "CartPole-v1", "n_envs": 2},
        "algorithm": {"name": "ppo", "hyperparams": {"n_steps": 64, "batch_size": 64, "n_epochs": 2}},
        "budget": {"timesteps": 512},
        "seed": 0,
        "evaluation": {"every_timesteps": 256, "episodes": 2},
        "checkpoint": {"every_timesteps": 256},
    }
    spec.update(overrides)
    return spec


def workers_gone(run_dir: Path) -> bool:
    """No worker recorded in the run dir's pid files is alive (zombies count as gone)."""
    for pid_file in run_dir.glob("worker-*.pid"):
        status = Path(f"/proc/{pid_file.read_text().strip()}/status")
        if status.exists() and "zombie" not in status.read_text():
            return False
    return True


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec mapping (or raw YAML text) to a file whose storage is under tmp_path/runs."""

    def write(spec: dict[str, Any] | str | None = None, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        if isinstance(spec, str):
            path.write_text(spec)
            return path
        data = dict(spec if spec is not None else base_spec())
        data.setdefault("storage", str(tmp_path / "runs" / "${experiment}" / "${trial_id}"))
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run `gymflow ARGS...` in this process through the entry point's code (main() adds only a fast exit)."""
    from gymflow.cli import run_cli

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["gymflow", *map(str, args)])
        capsys.readouterr()
        try:
            run_cli()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def prefect_server() -> Any:
    """A real Prefect server for the whole session (Prefect's test harness)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def run_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A `prefect server start` for tests that run `gymflow run` as a user does, kill it, restart the server..."""
    from prefect_stack import prefect_stack

    with prefect_stack(tmp_path_factory.mktemp("run-stack"), pool=False) as running:
        yield running


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh MLflow store (sqlite, MLflow's own default kind) for one test."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(autouse=True)
def _no_background_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never start gymflow's background Prefect server in the user's home."""
    monkeypatch.setenv("GYMFLOW_HOME", str(tmp_path / "gymflow-home"))


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Any]:
    """Resolve a spec mapping and write its spec.json, as the setup phase does; return the RunStore."""
    from gymflow import config
    from gymflow.results import SPEC_FILE
    from gymflow.storage import open_run

    def make(spec: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        data = dict(spec if spec is not None else base_spec())
        data.setdefault("storage", str(tmp_path / "runs" / "${trial_id}"))
        resolved = config.resolve(data, **kwargs)
        store = open_run(resolved.storage)
        store.write_json(SPEC_FILE, resolved.model_dump(mode="json"))
        return store

    return make


# -- the storage emulators: fake-gcs-server (PyPI) and Azurite (npm), one of each per session --
@pytest.fixture(scope="session")
def emulator() -> Iterator[str]:
    from gcs_emulator import fake_gcs_server

    with fake_gcs_server() as url:
        yield url


@pytest.fixture(scope="session")
def azurite_connection() -> Iterator[str]:
    from azurite import azurite

    with azurite() as connection:
        yield connection


@pytest.fixture(params=["gs", "az"])
def bucket(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket (gs://) or container (az://) on its emulator: its URI."""
    name = f"gymflow-test-{uuid.uuid4().hex[:10]}"
    if request.param == "gs":
        from gymflow.storage.gcs import GcsRunStore

        monkeypatch.setenv("STORAGE_EMULATOR_HOST", request.getfixturevalue("emulator"))
        assert GcsRunStore(f"gs://{name}").create_bucket() is True
        return f"gs://{name}"
    from azurite import ACCOUNT
    from gymflow.storage.azure import AzureRunStore

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", request.getfixturevalue("azurite_connection"))
    assert AzureRunStore(f"az://{ACCOUNT}/{name}").create_container() is True
    return f"az://{ACCOUNT}/{name}"


@pytest.fixture
def gcs(emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """STORAGE_EMULATOR_HOST set, and a fresh bucket: returns its gs:// URI."""
    from gymflow.storage.gcs import GcsRunStore

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    bucket = f"gymflow-test-{uuid.uuid4().hex[:10]}"
    assert GcsRunStore(f"gs://{bucket}").create_bucket() is True
    return f"gs://{bucket}"


@pytest.fixture(params=["local", "gs", "az"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A run-dir root on each kind of store: a local folder, a bucket on fake-gcs-server, a container on Azurite."""
    if request.param == "local":
        return str(tmp_path / "store")
    return str(request.getfixturevalue(f"{request.param}_bucket"))


@pytest.fixture
def gs_bucket(gcs: str) -> str:
    return gcs


@pytest.fixture
def az_bucket(azurite_connection: str, monkeypatch: pytest.MonkeyPatch) -> str:
    from azurite import ACCOUNT
    from gymflow.storage.azure import AzureRunStore

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection)
    uri = f"az://{ACCOUNT}/gymflow-test-{uuid.uuid4().hex[:10]}"
    assert AzureRunStore(uri).create_container() is True
    return uri


@pytest.fixture(scope="session")
def vm_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake VMs' and jobs' Python: a virtual environment over this one's packages, so what a startup script
    installs (gymflow's wheel) lands there, as on a VM's image, and never in the environment the tests run in."""
    folder = tmp_path_factory.mktemp("vm-image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(folder)], check=True, timeout=300)
    return folder / "bin"
