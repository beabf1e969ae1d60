"""The azure backend against an Azure ML stand-in at the wire (tests/fake_azureml.py) and Azurite: the real
azure-ai-ml MLClient and azure-storage-blob, credentials from the real DefaultAzureCredential (the stand-in's
managed-identity endpoint), and each job run as a local process that runs the real agent and worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import backends
from conftest import base_spec
from fake_azureml import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, FakeAzureML
from gymflow import config
from gymflow.errors import UserError
from gymflow.storage import open_run
from prefect_stack import ROOT, Stack
from records import mlflow_runs

IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"


@pytest.fixture
def aml(tmp_path: Path, az_bucket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzureML]:
    """The stand-in, with DefaultAzureCredential and MLClient pointed at it. Its jobs see Azurite through the
    connection string (on Azure a job reaches its storage as the cluster's managed identity; Azurite takes OAuth
    over HTTPS only)."""
    from backends.azure import backend as azure_backend

    with FakeAzureML(tmp_path / "aml", dict(os.environ)) as fake:
        for key, value in fake.credential_env().items():
            monkeypatch.setenv(key, value)
        for key in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "MSI_ENDPOINT"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setattr(azure_backend, "_workspaces", {})  # a client per stand-in
        yield fake


def _spec(bucket: str, **backend: Any) -> dict[str, Any]:
    settings = {"kind": "azure", "subscription_id": SUBSCRIPTION, "resource_group": RESOURCE_GROUP,
                "workspace": WORKSPACE, "compute": "gpu-cluster", "image": IMAGE, "poll_s": 0.5,
                "gymflow_install": "preinstalled", **backend}
    return base_spec(name="azure", storage=f"{bucket}/runs/${{trial_id}}", backend=settings)


def _backend(spec: dict[str, Any]) -> tuple[Any, Any]:
    resolved = config.resolve(spec)
    return backends.create(resolved), resolved


def _wait(backend: Any, handle: Any, phase: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        state = backend.poll(handle, phase)
        if not state.running:
            return state
        assert time.monotonic() < deadline, f"{phase} still running"
        time.sleep(0.5)


def test_a_trial_runs_as_a_job_with_what_the_spec_asks_for_and_teardown_cancels_it(aml: FakeAzureML, az_bucket: str) -> None:
    backend, spec = _backend(_spec(az_bucket, tier="low_priority", vm_size="Standard_NC6s_v3", max_nodes=3,
                                   job_timeout="2h", tags={"team": "rl"}))
    handle = backend.provision(spec)
    (cluster,) = aml.calls("PUT", r"/computes/gpu-cluster$")
    assert cluster is not None
    scale = cluster["properties"]["properties"]
    assert scale["vmSize"] == "Standard_NC6s_v3" and scale["vmPriority"] == "LowPriority"
    assert scale["scaleSettings"]["minNodeCount"] == 0 and scale["scaleSettings"]["maxNodeCount"] == 3
    backend.setup(handle, spec)
    backend.launch(handle, "train")
    (job,) = aml.calls("PUT", r"/jobs/[^/]+$")
    assert job is not None
    props = job["properties"]
    assert props["jobType"] == "Command" and props["computeId"].endswith("/computes/gpu-cluster")
    assert props["displayName"] == spec.run_name and props["experimentName"] == "azure"
    assert props["tags"] == {"team": "rl", "gymflow": "managed", "gymflow-trial": spec.trial_id,
                             "gymflow-experiment": "azure", "gymflow-run-uri": spec.storage}
    assert props["limits"]["timeout"] == "PT2H"
    assert "gymflow worker agent" in props["command"]
    assert aml.calls("PUT", r"/environments/[^/]+/versions/[^/]+$")[0]["properties"]["image"] == IMAGE
    state = _wait(backend, handle, "train")
    assert state.exit_code == 0, (aml.folder / "jobs").glob("*/user_logs/std_log.txt")
    assert open_run(spec.storage).read_json("status.json")["timesteps"] == 512
    assert len(aml.active()) == 1  # the agent waits for the next phase
    backend.teardown(handle)
    assert aml.active() == []
    backend.teardown(handle)  # idempotent
