"""Trials whose run dir lives in a bucket (gs:// on fake-gcs-server, az:// on Azurite) with the local backend:
the real worker, the real clients, a real Prefect server and MLflow; faults injected at the wire."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import base_spec
from fault_proxy import Faults, fault_proxy, upstream_of, via
from gymflow import config
from gymflow.results import Status
from gymflow.runtime import checkpoints
from gymflow.runtime.metrics import read_jsonl
from gymflow.storage import RunStore, open_run
from gymflow.storage.remote import PARTS

RESUME = {"env": {"id": "CartPole-v1", "n_envs": 2, "normalize": True}, "budget": {"timesteps": 8192},
          "checkpoint": {"every_timesteps": 1024, "keep": 2}, "evaluation": {"every_timesteps": 2048, "episodes": 1}}


def _store(bucket: str, **overrides: Any) -> RunStore:
    """A run dir in the bucket with its spec.json written, as setup does."""
    from gymflow.results import SPEC_FILE

    resolved = config.resolve(base_spec(storage=f"{bucket}/runs/${{trial_id}}", **overrides))
    store = open_run(resolved.storage)
    store.write_json(SPEC_FILE, resolved.model_dump(mode="json"))
    return store


def _status(store: RunStore) -> Status:
    return Status.model_validate(store.read_json("status.json"))


def _worker(store: RunStore, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gymflow", "worker", "train", store.uri], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **env, "CI": "true"})


def _wait(predicate: Any, proc: subprocess.Popen[bytes] | None, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc is None or proc.poll() is None, f"the worker ended before {what}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout:.0f} s")


def _newest(store: RunStore) -> int:
    ckpt = checkpoints.newest(store)
    return ckpt.timesteps if ckpt else 0


def _parts(store: RunStore) -> list[str]:
    return [name for name in store._names("") if f"{PARTS}/" in name]  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_trial_keeps_its_run_dir_in_a_bucket_with_metrics_in_mlflow_while_it_trains(bucket: str, mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    from flows.trial import trial

    spec = config.resolve(base_spec(storage=f"{bucket}/runs/${{trial_id}}", budget={"timesteps": 30000},
                                    evaluation={"every_timesteps": 10000, "episodes": 2},
                                    checkpoint={"every_timesteps": 10000}))
    store = open_run(spec.storage)
    seen: dict[str, Any] = {}

    def watch() -> None:  # what MLflow shows while the trial runs, next to the worker's status in the bucket
        client = MlflowClient(mlflow_uri)
        while "lag_s" not in seen and not seen.get("done"):
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()]) if client.search_experiments() else []
            history = client.get_metric_history(runs[0].info.run_id, "time/fps") if runs else []
            if history:
                now = time.time()
                seen["status"] = _status(store)
                seen["lag_s"] = now - min(m.timestamp for m in history) / 1000
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    state = trial(spec, return_state=True)
    seen["done"] = True
    watcher.join(10)
    assert state.is_completed(), state.message
    assert state.result().timesteps == 30000
    assert {p.name for p in store.workdir.iterdir()} <= {"worker-train.out", "worker-evaluate.out"}  # no copies left here

    assert "lag_s" in seen, "no training metric reached MLflow while the trial ran"
    assert seen["status"].state == "running" and seen["status"].phase == "train" and seen["status"].timesteps < 30000
    assert seen["lag_s"] <= 15, f"a metric took {seen['lag_s']:.1f} s from the worker to MLflow"

    files = store.list()
    for rel in ("spec.json", "status.json", "metrics/train.jsonl", "metrics/eval.jsonl", "model.zip", "eval.json",
                "learning_curve.png", "worker.log", "checkpoints/step_000000030000/model.zip",
                "checkpoints/step_000000030000/meta.json"):
        assert rel in files, f"{rel} missing from the bucket: {files}"
    assert _parts(store) == []  # sealed: each growing file is one object now
    assert [r["timesteps"] for r in read_jsonl(store.fetch("metrics/eval.jsonl"))] == [10000, 20000, 30000]
    assert "final evaluation" in store.read_from("worker.log", 0).decode()

    client = MlflowClient(mlflow_uri)
    run = client.get_run(state.result().mlflow_run_id)
    assert run.data.tags["gymflow.run_uri"] == spec.storage.rstrip("/")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model.zip", "spec.json", "worker.log", "eval.json"}


@pytest.mark.slow
def test_sigkill_midway_through_a_faulty_network_then_a_new_machine_resumes_from_the_bucket(bucket: str) -> None:
    store = _store(bucket, **RESUME)
    faults = Faults(every_503=5, every_drop=7, every_drop_after=11, limit=24)
    with fault_proxy(upstream_of(bucket, dict(os.environ)), faults) as proxy:
        env = via(bucket, dict(os.environ), proxy)
        proc = _worker(store, env)
        _wait(lambda: _newest(store) >= 3072, proc, "a checkpoint at 3072 timesteps")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        killed_at = _newest(store)
        assert _status(store).state == "running" and killed_at < 8192  # a killed worker cannot say so
        assert read_jsonl(store.fetch("metrics/train.jsonl")), "no metrics were published while training"

        shutil.rmtree(store.workdir)  # another machine: nothing of the first attempt on its disk
        rerun = _worker(store, env)
        assert rerun.wait(300) == 0
    assert faults.injected == 24  # the worker met 503s and dropped connections, in both directions

    status = _status(store)
    assert (status.state, status.timesteps, status.resumed_from) == ("completed", 8192, killed_at)
    assert _newest(store) == 8192 and store.exists("model.zip") and store.exists("vecnormalize.pkl")
    steps = [r["timesteps"] for r in read_jsonl(store.fetch("metrics/train.jsonl"))]
    assert steps == sorted(set(steps)) and steps[-1] > killed_at  # one timeline across the kill
    for rel in ("metrics/train.jsonl", "metrics/eval.jsonl", "worker.log"):  # nothing lost on the way to the bucket
        assert store.read_bytes(rel) == (store.workdir / rel).read_bytes(), rel
    assert _parts(store) == []
    log = store.read_bytes("worker.log").decode()
    assert f"resuming from the checkpoint at {killed_at} timesteps" in log


@pytest.mark.slow
def test_a_checkpoint_whose_upload_was_cut_is_never_resumed_from(bucket: str) -> None:
    store = _store(bucket, **RESUME)
    faults = Faults(hold=re.compile(r"step_000000002048(/|%2F)meta\.json"))
    with fault_proxy(upstream_of(bucket, dict(os.environ)), faults) as proxy:
        proc = _worker(store, via(bucket, dict(os.environ), proxy))
        _wait(lambda: faults.held > 0, proc, "the upload of the second checkpoint's meta.json")
        proc.send_signal(signal.SIGKILL)  # killed while that upload hangs
        proc.wait(30)
    half = store.list("checkpoints/step_000000002048")
    assert "checkpoints/step_000000002048/model.zip" in half and "checkpoints/step_000000002048/meta.json" not in half
    assert _newest(store) == 1024

    shutil.rmtree(store.workdir)
    from gymflow import worker

    assert worker.train(store) == "completed"
    status = _status(store)
    assert (status.resumed_from, status.timesteps) == (1024, 8192)


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_a_missing_bucket_is_refused_before_anything_starts(scheme: str, emulator: str, azurite_connection: str,
                                                           cli: Any, write_spec: Any, tmp_path: Path, mlflow_uri: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from azurite import ACCOUNT

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection)
    name = f"missing-{uuid.uuid4().hex[:10]}"  # the emulators are shared by the session's tests, and this one creates it
    root = f"gs://{name}" if scheme == "gs" else f"az://{ACCOUNT}/{name}"
    spec = write_spec(base_spec(storage=f"{root}/runs/${{trial_id}}"))
    result = cli("run", spec)
    assert result.code == 2 and "Traceback" not in result.stderr
    if scheme == "gs":
        message = (f"storage: the bucket '{name}' does not exist: create it (gcloud storage buckets create gs://{name}), "
                   "or set create_bucket: true in the spec to have provision create it")
    else:
        message = (f"storage: the container '{name}' does not exist in the storage account '{ACCOUNT}': create it (az "
                   f"storage container create --name {name} --account-name {ACCOUNT}), or set create_bucket: true in the "
                   "spec to have provision create it")
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "gymflow-home" / "run-cache").exists() and not (tmp_path / "mlflow.db").exists()

    asked = write_spec(base_spec(storage=f"{root}/runs/${{trial_id}}", create_bucket=True), name="create.yaml")
    assert cli("validate", asked).code == 0  # provision will create it
    from gymflow.storage import prepare

    prepare(f"{root}/runs/x", create=True)
    assert open_run(f"{root}/runs/x").root_exists()  # type: ignore[attr-defined]
    assert cli("validate", spec).code == 0


@pytest.mark.usefixtures("prefect_server")
def test_credentials_that_may_not_write_fail_with_the_fix_and_leave_nothing(
        azurite_connection: str, cli: Any, write_spec: Any, tmp_path: Path, mlflow_uri: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import (AccountSasPermissions, ContainerSasPermissions, ResourceTypes, generate_account_sas,
                                    generate_container_sas)

    from azurite import ACCOUNT, KEY
    from gymflow.storage.azure import AzureRunStore

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection)
    name = f"read-only-{os.getpid()}"
    AzureRunStore(f"az://{ACCOUNT}/{name}").create_container()
    expiry = datetime.now(timezone.utc) + timedelta(hours=1)
    endpoint = re.search(r"BlobEndpoint=([^;]+)", azurite_connection)[1]  # type: ignore[index]
    spec = write_spec(base_spec(storage=f"az://{ACCOUNT}/{name}/runs/${{trial_id}}"))
    fix = ("the shared access signature in AZURE_STORAGE_CONNECTION_STRING does not allow it; make one with read, add, "
           "create, write, delete and list permissions on the container")

    # a container SAS that may only read: even asking whether the container exists is denied, before anything starts
    sas = generate_container_sas(ACCOUNT, name, account_key=KEY, expiry=expiry,
                                 permission=ContainerSasPermissions(read=True, list=True))
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"BlobEndpoint={endpoint};SharedAccessSignature={sas}")
    refused = cli("run", spec)
    assert refused.code == 2 and fix in " ".join(refused.stderr.split()) and "Traceback" not in refused.stderr

    # an account SAS that may read and list: the checks pass, the first write (the lease, before anything is
    # provisioned) is denied: refused, exit 2
    sas = generate_account_sas(ACCOUNT, KEY, ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, list=True), expiry)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"BlobEndpoint={endpoint};SharedAccessSignature={sas}")
    failed = cli("run", spec)
    assert failed.code == 2
    summary = " ".join(failed.stderr[failed.stderr.rindex("refused: "):].split())  # the CLI's last word on the trial
    assert summary.startswith(f"refused: writing az://{ACCOUNT}/{name}/runs/") and "/owner.json was denied" in summary
    assert fix in summary

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection)
    assert open_run(f"az://{ACCOUNT}/{name}").list() == []  # nothing written
    cache = tmp_path / "gymflow-home" / "run-cache"
    assert not cache.exists() or not any(p.is_file() and not p.name.endswith(".out") for p in cache.rglob("*"))


@pytest.mark.usefixtures("prefect_server")
def test_a_bucket_that_refuses_writes_refuses_the_trial_with_the_role_it_needs_and_leaves_nothing(
        gcs: str, cli: Any, write_spec: Any, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    faults = Faults(deny_writes=True)  # reads go through: the bucket is found; every write is answered 403
    with fault_proxy(os.environ["STORAGE_EMULATOR_HOST"], faults) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy)
        failed = cli("run", write_spec(base_spec(storage=f"{gcs}/runs/${{trial_id}}")))
    assert failed.code == 2  # the first write is the lease's, before anything is provisioned: refused
    summary = " ".join(failed.stderr[failed.stderr.rindex("refused: "):].split())
    assert summary.startswith(f"refused: writing {gcs}/runs/") and (
        "/owner.json was denied (403): the account in use (Application Default Credentials) needs the role "
        "roles/storage.objectAdmin on the bucket") in summary
    assert open_run(gcs).list() == []  # nothing written
    cache = tmp_path / "gymflow-home" / "run-cache"
    assert not cache.exists() or not any(p.is_file() and not p.name.endswith(".out") for p in cache.rglob("*"))


def test_a_storage_service_that_does_not_answer_is_refused_within_the_set_wait(cli: Any, write_spec: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_stack import free_port

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("GYMFLOW_STORAGE_CHECK_S", "1")
    started = time.monotonic()
    result = cli("validate", write_spec(base_spec(storage=f"gs://silent-{uuid.uuid4().hex[:8]}/runs/${{trial_id}}")))
    assert result.code == 2 and time.monotonic() - started < 30
    message = " ".join(result.stderr.split())
    assert "storage: could not ask whether the bucket of 'gs://silent-" in message
    assert ("' exists: no answer within 1 s. Check the network and credentials, or set GYMFLOW_STORAGE_CHECK_S=0 to skip "
            "this check") in message
