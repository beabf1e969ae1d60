"""The gcp backend against a Compute Engine stand-in at the wire (tests/fake_compute.py) and fake-gcs-server:
the real google-cloud-compute and google-cloud-storage clients, credentials from the real Application Default
Credentials chain (the stand-in's metadata server), and each VM booted as a local process that runs the real
startup script, agent and worker."""

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
from fake_compute import PROJECT, FakeCompute
from gymflow import config
from gymflow.errors import UserError
from gymflow.storage import open_run
from prefect_stack import ROOT, Stack
from records import mlflow_runs

IMAGE = "projects/debian-cloud/global/images/family/debian-12"


@pytest.fixture
def compute(tmp_path: Path, gcs: str, vm_python: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCompute]:
    """The stand-in, with Application Default Credentials pointed at its metadata server."""
    from google.auth.compute_engine import _metadata

    vm_env = {**os.environ, "PATH": f"{vm_python}{os.pathsep}{os.environ.get('PATH', '')}", "CI": "true"}
    vm_env.pop("VIRTUAL_ENV", None)
    with FakeCompute(tmp_path / "vms", vm_env) as fake:
        fake.vm_env["GCE_METADATA_HOST"] = fake.metadata_host  # a VM's metadata server: its service account's token
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv("GCE_METADATA_HOST", fake.metadata_host)
        monkeypatch.setenv("GCE_METADATA_IP", fake.metadata_host)
        # google-auth reads GCE_METADATA_HOST once, when first imported (a subprocess gets it from the environment)
        monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", fake.metadata_host)
        (tmp_path / "vms").mkdir(exist_ok=True)
        yield fake


def _spec(gcs: str, fake: FakeCompute, **backend: Any) -> dict[str, Any]:
    """A trial on the stand-in. Its VMs find gymflow on their image unless a test asks for the wheel (a VM deleted
    while pip installs into the one image the fake VMs share would leave it half-installed)."""
    settings = {"kind": "gcp", "zone": "us-central1-a", "machine_type": "e2-standard-2", "image": IMAGE,
                "api_endpoint": fake.url, "poll_s": 0.5, "gymflow_install": "preinstalled", **backend}
    return base_spec(name="gcp", storage=f"{gcs}/runs/${{trial_id}}", backend=settings)


def _backend(spec: dict[str, Any]) -> tuple[Any, Any]:
    resolved = config.resolve(spec)
    return backends.create(resolved), resolved


# -- provision and teardown ---------------------------------------------------------------------------
def test_provision_creates_a_labelled_vm_with_a_cloud_side_time_limit_and_teardown_deletes_it(
        compute: FakeCompute, gcs: str) -> None:
    backend, spec = _backend(_spec(gcs, compute, spot=True, max_run_duration="2h", labels={"team": "rl"}))
    handle = backend.provision(spec)
    assert handle.data["zone"] == "us-central1-a" and len(compute.running()) == 1
    body = compute.calls("POST", r"/zones/us-central1-a/instances$")[0]
    assert body is not None
    assert body["machineType"] == "zones/us-central1-a/machineTypes/e2-standard-2"
    assert body["labels"] == {"team": "rl", "gymflow": "managed", "gymflow-trial": spec.trial_id.lower(),
                              "gymflow-experiment": "gcp"}
    assert body["scheduling"]["maxRunDuration"] == {"seconds": "7200"}
    assert body["scheduling"]["instanceTerminationAction"] == "DELETE"
    assert body["scheduling"]["provisioningModel"] == "SPOT" and body["scheduling"]["onHostMaintenance"] == "TERMINATE"
    items = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    assert "gymflow worker agent" in items["startup-script"] and items["gymflow-run-uri"] == spec.storage
    assert f"projects/{PROJECT}/" in compute.requests[0][1]  # the project came with the credentials
    backend.teardown(handle)
    assert compute.vms == {}
    backend.teardown(handle)  # idempotent: a second teardown finds nothing and is fine


def test_a_zone_without_room_moves_on_to_the_next(compute: FakeCompute, gcs: str) -> None:
    compute.no_room["us-central1-a"] = "ZONE_RESOURCE_POOL_EXHAUSTED"
    compute.no_room["us-central1-b"] = "QUOTA_EXCEEDED"
    backend, spec = _backend(_spec(gcs, compute, fallback_zones=["us-central1-b", "us-east1-c"]))
    handle = backend.provision(spec)
    assert handle.data["zone"] == "us-east1-c"
    assert [vm.zone for vm in compute.running()] == ["us-east1-c"]
    backend.teardown(handle)


def test_429_and_503_are_retried(compute: FakeCompute, gcs: str) -> None:
    compute.fail_next = [429, 503]
    backend, spec = _backend(_spec(gcs, compute))
    handle = backend.provision(spec)
    assert len(compute.running()) == 1
    backend.teardown(handle)


def test_teardown_of_a_half_provisioned_trial_finds_its_vm_by_label(compute: FakeCompute, gcs: str) -> None:
    backend, spec = _backend(_spec(gcs, compute))
    backend.provision(spec)
    backend.teardown(backend.plan(spec))  # the handle before provision returned: no zone known
    assert compute.vms == {}


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("machine_type", "e2-huge-999", "backend.machine_type: Compute Engine refused it in us-central1-a"),
    ("image", "projects/nobody/global/images/family/none", "backend.image: Compute Engine refused it in us-central1-a"),
])
def test_a_bad_setting_fails_at_once_naming_it(compute: FakeCompute, gcs: str, setting: str, value: str, message: str) -> None:
    backend, spec = _backend(_spec(gcs, compute, **{setting: value}))
    with pytest.raises(UserError, match=message):
        backend.provision(spec)
    assert compute.vms == {} and len(compute.calls("POST", r"/instances$")) == 1  # not retried


def test_missing_credentials_name_the_command_that_fixes_them(gcs: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from backends.gcp.compute import Compute

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")  # nothing answers: not on Google Cloud
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    with pytest.raises(UserError, match=r"no Google Cloud credentials found\. Run `gcloud auth application-default login`"):
        Compute("p", "http://127.0.0.1:9", None)


def test_credentials_without_a_project_say_where_to_set_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import json

    from backends.gcp.compute import Compute

    user = tmp_path / "adc.json"  # what `gcloud auth application-default login` writes: no project in it
    user.write_text(json.dumps({"type": "authorized_user", "client_id": "id", "client_secret": "s", "refresh_token": "r"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user))
    for name in ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    with pytest.raises(UserError, match=r"^backend\.project: no Google Cloud project given and none comes with the "
                                        r"credentials; set backend\.project \(or `gcloud config set project`\)$"):
        Compute(None, "http://127.0.0.1:9", None)


def test_a_credentials_block_without_prefect_gcp_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from backends.gcp.compute import Compute

    monkeypatch.setitem(sys.modules, "prefect_gcp", None)  # as where prefect-gcp is not installed
    with pytest.raises(UserError, match=r"^backend\.credentials_block: 'team-gcp' needs prefect-gcp "
                                        r"\(pip install prefect-gcp\)$"):
        Compute("p", "http://127.0.0.1:9", "team-gcp")


def test_a_trial_past_its_replacements_fails_saying_how_to_resume(compute: FakeCompute, gcs: str) -> None:
    from gymflow.errors import WorkerError
    from tasks.follow import _replace

    backend, _ = _backend(_spec(gcs, compute, spot=True, max_preemptions=1))
    with pytest.raises(WorkerError, match=r"^VM gf-x-1 is gone during train, and the trial has had the 1 replacement\(s\) "
                                          r"it may have \(backend\.max_preemptions\); run the same spec again to resume "
                                          r"from its newest checkpoint$"):
        _replace(backend, None, "train", "VM gf-x-1 is gone", 2, None, None, None)  # type: ignore[arg-type]
    assert compute.vms == {}


def test_validate_refuses_a_run_dir_outside_cloud_storage(write_spec: Any, cli: Any) -> None:
    spec = base_spec(backend={"kind": "gcp", "project": "p"}, storage="/tmp/runs/${trial_id}")
    result = cli("validate", str(write_spec(spec)))
    said = result.stdout + result.stderr
    assert result.code == 2, said
    assert "storage: backend gcp keeps the run dir in Cloud Storage, not '/tmp/runs/" in said
    assert "set storage: gs://BUCKET/PREFIX/${trial_id}" in said


def test_validate_names_a_bad_gcp_setting(write_spec: Any, cli: Any) -> None:
    spec = base_spec(backend={"kind": "gcp", "max_run_duration": "forever", "machine": "x"}, storage="gs://b/${trial_id}")
    result = cli("validate", str(write_spec(spec)))
    said = result.stdout + result.stderr
    assert result.code == 2, said
    assert "backend.max_run_duration" in said and "give seconds, or a number with s, m, h or d" in said
    assert "backend.machine" in said and "Extra inputs are not permitted" in said


# -- a whole trial ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_trial_runs_all_six_phases_on_vms_and_a_preempted_one_is_replaced_resuming_to_exactly_the_budget(
        compute: FakeCompute, gcs: str, run_stack: Stack, tmp_path: Path) -> None:
    """The whole path: VM -> startup script (gymflow's wheel) -> agent -> worker -> gs:// run dir -> orchestrator;
    the spot VM is preempted during training, a second one resumes from the checkpoint; no VM is left."""
    spec = _spec(gcs, compute, spot=True, gymflow_install="wheel")
    spec.update(budget={"timesteps": 8192}, checkpoint={"every_timesteps": 1024},
                evaluation={"every_timesteps": 4096, "episodes": 1})
    path = _written(spec, tmp_path)
    resolved = config.resolve(spec)
    store = open_run(resolved.storage)
    proc = subprocess.Popen(_command("run", str(path)), cwd=ROOT, env=_run_env(compute, run_stack, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not store.list("checkpoints/"):  # training is under way on the first VM
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        first = f"gf-{resolved.trial_id.lower()}-0"
        compute.preempt(first)
        said = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, said
    assert f"VM {first} is gone during train: replacing it (1 of at most 3)" in said
    assert store.read_json("status.json")["timesteps"] == 8192  # resumed from the checkpoint, exactly the budget
    second = (tmp_path / "vms" / f"serial-gf-{resolved.trial_id.lower()}-1.log").read_text()  # the second VM ran it
    assert "is installed already" in second  # the fake VMs share one image: the build found there is not installed again
    assert compute.vms == {}, "a VM outlived its trial"
    runs = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert [r.info.status for r in runs] == ["FINISHED"] and runs[0].data.tags["gymflow.preemptions"] == "1"
    assert runs[0].data.tags["gymflow.device"] == "cpu"  # auto: PPO's MLP on the CPU (and the fake VMs have no GPU)
    assert store.read_json("eval.json")["n_episodes"] >= 1
    # launches: train on the first VM (lost with it), train again on the second, evaluate
    assert [p for p in store.list("agent/") if "state-" in p] == [f"agent/state-{n}.json" for n in (1, 2, 3)]
    serial = (tmp_path / "vms" / f"serial-{first}.log").read_text()
    assert "starting the agent on gs://" in serial
    from gymflow import shipping

    wheel = shipping.wheel()  # the exact gymflow of the orchestrator went to the VM
    assert open_run(f"{gcs}/.gymflow/wheels/{wheel.build}").exists(wheel.filename)
    assert f"installing gymflow build {wheel.build}" in serial or f"gymflow build {wheel.build} is installed already" in serial
    # the credentials' token appears nowhere: not in what was said, the run dir, MLflow's params and tags
    secret = "fake-compute-token"
    assert secret not in said and secret not in serial
    assert all(secret.encode() not in store.read_bytes(rel) for rel in store.list() if not rel.endswith(".zip"))
    assert all(secret not in str(v) for r in runs for v in [*r.data.params.values(), *r.data.tags.values()])


def _run_env(compute: FakeCompute, stack: Stack, tmp_path: Path) -> dict[str, str]:
    """`gymflow run` as a user on Google Cloud runs it: Application Default Credentials (here the stand-in's metadata
    server), the bucket (here fake-gcs-server), a Prefect server and an MLflow store."""
    env = {**stack.env, "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"],
           "GCE_METADATA_HOST": compute.metadata_host, "GCE_METADATA_IP": compute.metadata_host,
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "GYMFLOW_HOME": str(tmp_path / "home")}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    return env


def _written(spec: dict[str, Any], tmp_path: Path, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gymflow", *args]


def _gymflow(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`gymflow ARGS` as a user runs it, to its end."""
    return subprocess.run(_command(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_polling_many_trials_costs_one_list_call_per_interval(compute: FakeCompute, gcs: str) -> None:
    backend, _ = _backend(_spec(gcs, compute, poll_s=30))
    handles = []
    for seed in range(3):
        spec = config.resolve({**_spec(gcs, compute, poll_s=30), "seed": seed})
        handle = backend.provision(spec)
        backend.store(handle).write_json("spec.json", spec.model_dump(mode="json"))
        backend.launch(handle, "train")
        handles.append(handle)
    try:
        before = len(compute.calls("GET", r"/aggregated/instances$"))
        for _ in range(4):
            for handle in handles:
                assert backend.poll(handle, "train").running
        assert len(compute.calls("GET", r"/aggregated/instances$")) - before <= 1
        assert not compute.calls("GET", r"/instances/gf-[^/]+$")  # never one VM at a time
    finally:
        for handle in handles:
            backend.teardown(handle)
    assert compute.vms == {}


@pytest.mark.slow
def test_a_worker_that_never_starts_fails_the_train_task_with_the_serial_console(
        compute: FakeCompute, gcs: str, run_stack: Stack, tmp_path: Path) -> None:
    spec = _spec(gcs, compute, packages=["gymflow-no-such-package-anywhere==0.0.1"], startup_grace_s=15)
    done = _gymflow(_run_env(compute, run_stack, tmp_path), "run", str(_written(spec, tmp_path)))
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "the train worker wrote no status within 15 s of its launch" in said
    assert "the VM's serial console ends:" in said
    assert "gymflow-startup: FAILED: pip could not install gymflow-no-such-package-anywhere==0.0.1" in said
    assert compute.vms == {}, "teardown left the VM"


def test_gc_deletes_the_vms_no_live_trial_owns_and_leaves_the_others(compute: FakeCompute, gcs: str, write_spec: Any,
                                                                       cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from gymflow.cli import out
    from gymflow.ownership import Lease

    monkeypatch.setattr(out, "width", 500)  # the table's rows on one line each
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{write_spec(base_spec()).parent}/mlflow.db")
    backend, _ = _backend(_spec(gcs, compute))
    live, dead = (config.resolve({**_spec(gcs, compute), "seed": seed}) for seed in (0, 1))
    lease = Lease.acquire(open_run(live.storage), live.trial_id or "")  # this process runs the first trial
    dead_lease = Lease.acquire(open_run(dead.storage), dead.trial_id or "")
    dead_lease.release()  # the second trial's orchestrator let go, but its VM was left behind
    try:
        for spec in (live, dead):
            backend.provision(spec)
        path = write_spec(_spec(gcs, compute))
        looked = cli("gc", "--backend", "gcp", "--spec", str(path), "--dry-run")
        assert looked.code == 0, looked.stdout + looked.stderr
        assert "would delete the VM" in looked.stdout and len(compute.vms) == 2
        done = cli("gc", "--backend", "gcp", "--spec", str(path))
        assert done.code == 0, done.stdout + done.stderr
        assert "VM deleted" in done.stdout and "released" in done.stdout
        assert [vm.body["name"] for vm in compute.vms.values()] == [f"gf-{(live.trial_id or '').lower()}-0"]
    finally:
        lease.release()
        for vm in list(compute.vms.values()):
            compute.preempt(vm.body["name"])


@pytest.mark.usefixtures("prefect_server")
def test_the_gc_flow_deletes_a_left_vm_and_without_credentials_still_collects_the_records(
        compute: FakeCompute, gcs: str, write_spec: Any, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.gc import gc

    backend, spec = _backend(_spec(gcs, compute))
    backend.provision(spec)  # no lease: its trial never ran, or ended without its teardown
    path = str(write_spec(_spec(gcs, compute)))
    found = gc(older_than_s=0, backend="gcp", spec_file=path)
    assert [(f["kind"], f["action"]) for f in found] == [("VM", "VM deleted")] and compute.vms == {}
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")  # no credentials where it runs now
    monkeypatch.setattr("google.auth.compute_engine._metadata._GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("CLOUDSDK_CONFIG", "/nonexistent")
    from backends.gcp import backend as gcp_backend

    monkeypatch.setattr(gcp_backend, "_computes", {})
    assert gc(older_than_s=0, backend="gcp", spec_file=path) == []


def test_the_example_spec_validates_and_validate_estimates_what_it_costs(gcs: str, cli: Any) -> None:
    done = cli("validate", str(ROOT / "examples" / "gcp-cartpole-ppo.yaml"), "--set", f"storage={gcs}/runs/${{trial_id}}")
    assert done.code == 0, done.stdout + done.stderr
    said = " ".join(done.stderr.split())
    # an n2-standard-4 spot VM ($0.047/h) and a 100 GB disk ($0.10 per GB-month): 6 h at most, on up to 1 + 3 VMs
    assert ("cost: about $0.06 per hour of the trial's VM (n2-standard-4 spot, 100 GB disk, deleted after 6h; replaced "
            "up to 3 times if preempted); at most $1.46 if it runs to its time limit [an estimate from list prices for "
            "us-central1 as of 2026-11") in said
    assert "warning" not in said  # no GPU to idle


def test_validate_warns_when_the_gpu_of_the_machine_type_would_sit_idle(gcs: str, cli: Any, write_spec: Any) -> None:
    spec = base_spec(name="gcp", storage=f"{gcs}/runs/${{trial_id}}", backend={"kind": "gcp", "machine_type": "g2-standard-4"})
    said = " ".join(cli("validate", str(write_spec(spec))).stderr.split())
    assert ("warning: backend.machine_type g2-standard-4 has a GPU that this trial will not use: algorithm.device auto "
            "trains it on the CPU (ppo's MLP policy trains faster on the CPU than on a GPU: on-policy, small batches). A "
            "CPU machine type such as n2-standard-4 (about $0.21 per hour) does the same work; or set algorithm.device: "
            "cuda to use the GPU") in said, said
    sac = {**spec, "algorithm": {"name": "sac", "hyperparams": {"learning_starts": 100}}, "env": {"id": "Pendulum-v1"}}
    said = " ".join(cli("validate", str(write_spec(sac))).stderr.split())
    assert "ok:" in said and "warning" not in said  # SAC's 256x256 networks are faster on the GPU
    cpu = {**sac, "algorithm": {**sac["algorithm"], "device": "cpu"}}
    said = " ".join(cli("validate", str(write_spec(cpu))).stderr.split())
    assert "has a GPU that this trial will not use: algorithm.device is cpu. A CPU machine type" in said, said


def test_a_sweep_estimate_counts_parallel_vms_spot_replacements_and_names_an_unpriced_machine(gcs: str) -> None:
    from backends.gcp import prices

    spec = base_spec(name="gcp", storage=f"{gcs}/runs/${{trial_id}}",
                     backend={"kind": "gcp", "machine_type": "n1-standard-4", "accelerator_type": "nvidia-tesla-t4",
                              "spot": True, "max_preemptions": 1, "boot_disk_gb": 73, "max_run_duration": "2h"})
    trials = [config.resolve({**spec, "seed": seed}) for seed in range(4)]
    hourly = prices.MACHINES["n1-standard-4"][1] + prices.ACCELERATORS["nvidia-tesla-t4"][1] + 73 * 0.10 / 730
    note = backends.notes(trials, 3)[0]  # (and a warning that the T4 would idle, when the build check has run)
    assert note.startswith(f"cost: about {prices.money(hourly)} per VM-hour (n1-standard-4 + 1x nvidia-tesla-t4 spot, "
                           "73 GB disk, deleted after 2h; replaced up to 1 times if preempted); 3 VMs at once: up to "
                           f"{prices.money(3 * hourly)} per hour; 4 trials: at most {prices.money(4 * hourly * 2 * 2)}"), note
    unpriced = [config.resolve({**spec, "backend": {"kind": "gcp", "machine_type": "m3-megamem-64"}})]
    assert backends.notes(unpriced, None) == [f"cost: no price on record for machine type 'm3-megamem-64'; see {prices.SOURCE}"]


@pytest.mark.slow
def test_permission_denied_exits_2_with_one_message_and_creates_nothing(compute: FakeCompute, gcs: str, run_stack: Stack,
                                                                        tmp_path: Path) -> None:
    compute.deny_create = True
    done = _gymflow(_run_env(compute, run_stack, tmp_path), "run", str(_written(_spec(gcs, compute), tmp_path)))
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "backend: permission denied creating a VM" in said and "roles/compute.instanceAdmin.v1" in said
    assert "Traceback" not in said
    assert len(compute.calls("POST", r"/instances$")) == 1 and compute.vms == {}  # asked once, not retried


def test_no_zone_with_room_says_what_to_change(compute: FakeCompute, gcs: str) -> None:
    compute.no_room.update({"us-central1-a": "ZONE_RESOURCE_POOL_EXHAUSTED", "us-central1-b": "QUOTA_EXCEEDED"})
    backend, spec = _backend(_spec(gcs, compute, fallback_zones=["us-central1-b"]))
    with pytest.raises(Exception, match=r"no zone had capacity or quota for the VM: us-central1-a: ZONE_RESOURCE_POOL_"
                                        r"EXHAUSTED.*Add zones to backend\.fallback_zones, use another machine type, or "
                                        r"ask for quota"):
        backend.provision(spec)
    assert compute.vms == {}


def test_gc_refuses_a_spec_of_another_backend(write_spec: Any, cli: Any) -> None:
    path = write_spec(base_spec())
    done = cli("gc", "--backend", "gcp", "--spec", str(path))
    assert done.code == 2
    assert f"--spec {path}: its backend is 'local', not --backend 'gcp'" in done.stderr


@pytest.mark.slow
def test_a_sweep_runs_its_trials_as_parallel_vms_up_to_max_parallel(compute: FakeCompute, gcs: str, run_stack: Stack,
                                                                   tmp_path: Path) -> None:
    """`gymflow sweep` with backend gcp: the sweep flow follows the VMs from threads, two at a time, and compares."""
    spec = _spec(gcs, compute)
    spec["sweep"] = {"seeds": [0, 1, 2], "max_parallel": 2}
    done = _gymflow(_run_env(compute, run_stack, tmp_path), "sweep", "--verbose", str(_written(spec, tmp_path, "sweep.yaml")))
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert len(compute.calls("POST", r"/instances$")) == 3 and compute.peak == 2, said  # a VM per trial, two at a time
    assert compute.vms == {}, "a VM outlived its trial"
    assert "LocalCluster" not in said and "distributed" not in said  # no local Dask cluster for trials that run on VMs
    runs = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4  # the sweep's run and its three trials
    runs_dir = open_run(f"{gcs}/runs")
    statuses = [rel for rel in runs_dir.list() if rel.endswith("/status.json")]
    assert len(statuses) == 3 and all(runs_dir.read_json(rel)["timesteps"] == 512 for rel in statuses)


@pytest.mark.slow
def test_a_killed_orchestrator_leaves_a_vm_that_gc_finds_and_compute_engine_deletes_at_its_time_limit(
        compute: FakeCompute, gcs: str, run_stack: Stack, tmp_path: Path) -> None:
    compute.time_scale = 0.1  # the VM's 300 s maxRunDuration runs out after 30 s here
    spec = _spec(gcs, compute, max_run_duration=300)
    spec.update(budget={"timesteps": 200_000})
    path = _written(spec, tmp_path)
    store = open_run(config.resolve(spec).storage)
    env = _run_env(compute, run_stack, tmp_path)
    proc = subprocess.Popen(_command("run", str(path)), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (store.exists("status.json") and store.read_json("status.json").get("phase") == "train"):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.kill()  # the laptop went to sleep: no teardown
    proc.wait()
    [vm] = compute.vms.values()
    assert vm.body["scheduling"]["maxRunDuration"] == {"seconds": "300"}
    looked = _gymflow({**env, "COLUMNS": "2000"}, "gc", "--backend", "gcp", "--spec", str(path), "--dry-run", timeout=300)
    assert looked.returncode == 0 and "would delete the VM" in looked.stdout, looked.stdout + looked.stderr
    assert list(compute.vms.values()) == [vm]  # --dry-run deletes nothing
    while compute.vms:  # Compute Engine itself deletes the VM when its time is up
        assert time.time() - vm.created < 60, "the VM outlived its maxRunDuration"
        time.sleep(0.5)
    assert vm.proc is not None and vm.proc.poll() is not None  # and the worker on it is gone
    done = _gymflow({**env, "COLUMNS": "2000"}, "gc", "--backend", "gcp", "--spec", str(path), timeout=300)
    assert done.returncode == 0 and "flow run marked Crashed" in done.stdout, done.stdout + done.stderr  # records true


@pytest.mark.slow
def test_an_exception_in_each_phase_leaves_no_vm(compute: FakeCompute, gcs: str, run_stack: Stack, tmp_path: Path) -> None:
    """The fault table's exception column on gcp: a run fails in provision, its rerun in setup, … each torn down to
    no VM; a failing teardown task is done directly; the last run completes and leaves none either."""
    spec = _spec(gcs, compute)
    spec["backend"]["kind"] = "fault_backends:FaultyGcpBackend"
    path = _written(spec, tmp_path)
    env = _run_env(compute, run_stack, tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    for phase in ["provision", "setup", "train", "evaluate", "store", "teardown"]:
        done = _gymflow({**env, "GYMFLOW_TEST_FAULT": f"raise@{phase}"}, "run", str(path))
        said = done.stdout + done.stderr
        if phase == "teardown":
            assert done.returncode == 0 and "the teardown task did not complete; tearing down directly" in said, said
        else:
            assert done.returncode == 1 and f"failed: injected failure in {phase}" in said, said
        assert compute.vms == {}, f"a VM outlived the trial that failed in {phase}"
    assert len(compute.calls("POST", r"/instances$")) == 6  # a VM per run, each deleted


IMAGE_IN_REGISTRY = "us-docker.pkg.dev/gymflow-test/sims/cartpole:1"


@pytest.fixture
def docker_on_vms(compute: FakeCompute, tmp_path: Path) -> FakeCompute:
    """The fake VMs' image has Docker (tests/fake_docker.py), and the registry holds IMAGE_IN_REGISTRY."""
    folder = tmp_path / "docker-bin"
    folder.mkdir()
    docker = folder / "docker"
    docker.write_text(f"#!/bin/bash\nexec {sys.executable} {Path(__file__).parent / 'fake_docker.py'} \"$@\"\n")
    docker.chmod(0o755)
    compute.vm_env["PATH"] = f"{folder}{os.pathsep}{compute.vm_env['PATH']}"
    compute.vm_env["FAKE_DOCKER_IMAGES"] = IMAGE_IN_REGISTRY
    return compute


@pytest.mark.slow
def test_a_trial_runs_its_worker_in_the_container_image(docker_on_vms: FakeCompute, gcs: str, run_stack: Stack,
                                                       tmp_path: Path) -> None:
    compute = docker_on_vms
    spec = _spec(gcs, compute, container_image=IMAGE_IN_REGISTRY)
    done = _gymflow(_run_env(compute, run_stack, tmp_path), "run", str(_written(spec, tmp_path)))
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    name = f"gf-{(config.resolve(spec).trial_id or '').lower()}-0"
    serial = (tmp_path / "vms" / f"serial-{name}.log").read_text()
    assert f"pulling {IMAGE_IN_REGISTRY}" in serial and f"starting the agent in {IMAGE_IN_REGISTRY}" in serial, serial
    assert "ready; starting the agent on gs://" in serial  # the agent's own start, inside the container
    assert open_run(config.resolve(spec).storage).read_json("status.json")["timesteps"] == 512
    assert compute.vms == {}


def _startup_failure(compute: FakeCompute, gcs: str, **backend: Any) -> str:
    """The serial console of a VM whose startup script failed; the VM is torn down."""
    vms, spec = _backend(_spec(gcs, compute, **backend))
    handle = vms.provision(spec)
    try:
        serial = compute.folder / f"serial-{handle.data['vm']}.log"
        deadline = time.monotonic() + 60
        while "FAILED" not in (serial.read_text() if serial.exists() else ""):
            assert time.monotonic() < deadline, serial.read_text() if serial.exists() else "no serial console"
            time.sleep(0.2)
        return serial.read_text()
    finally:
        vms.teardown(handle)
        assert compute.vms == {}


def test_an_image_the_registry_lacks_ends_the_startup_saying_what_to_check(docker_on_vms: FakeCompute, gcs: str) -> None:
    said = _startup_failure(docker_on_vms, gcs, container_image="us-docker.pkg.dev/gymflow-test/sims/nope:1")
    assert ("gymflow-startup: FAILED: docker could not pull us-docker.pkg.dev/gymflow-test/sims/nope:1: check "
            "backend.container_image, and that the VM's service account may read it (roles/artifactregistry.reader)"
            ) in said


def test_a_container_image_on_a_vm_image_without_docker_says_so(compute: FakeCompute, gcs: str) -> None:
    path = compute.vm_env["PATH"].split(os.pathsep)  # a VM image without Docker (this machine may have its CLI)
    compute.vm_env["PATH"] = os.pathsep.join(d for d in path if not (Path(d) / "docker").exists())
    said = _startup_failure(compute, gcs, container_image=IMAGE_IN_REGISTRY)
    assert ("gymflow-startup: FAILED: no docker on the VM image: backend.container_image needs an image with Docker "
            "(the default Deep Learning VM image has it)") in said


@pytest.mark.slow
def test_a_worker_killed_on_its_vm_fails_the_trial_leaves_no_vm_and_a_rerun_resumes(
        compute: FakeCompute, gcs: str, run_stack: Stack, tmp_path: Path) -> None:
    """The fault table's worker column on gcp: the train worker SIGKILLed on the VM (the OOM killer, a crash of the
    simulator's native code) fails the run naming the signal; the VM is deleted; the same spec again resumes on a new
    VM from the checkpoint to exactly the budget."""
    import psutil

    spec = _spec(gcs, compute)
    spec.update(budget={"timesteps": 4096}, checkpoint={"every_timesteps": 512})
    path = _written(spec, tmp_path)
    store = open_run(config.resolve(spec).storage)
    env = _run_env(compute, run_stack, tmp_path)
    proc = subprocess.Popen(_command("run", str(path)), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not store.list("checkpoints/"):  # training is under way on the VM
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        workers = [p for p in psutil.process_iter(["cmdline"])
                   if p.info["cmdline"] and p.info["cmdline"][-3:] == ["worker", "train", store.uri]]
        assert len(workers) == 1, workers
        workers[0].kill()
        said = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, said
    assert "failed: the train worker was killed by SIGKILL (exit code -9)" in said, said
    assert compute.vms == {}, "the VM outlived its failed trial"
    rerun = _gymflow(env, "run", str(path))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert store.read_json("status.json")["timesteps"] == 4096
    assert "resuming from the checkpoint at" in store.read_bytes("worker.log").decode()  # not from scratch
    assert compute.vms == {}


@pytest.mark.slow
def test_the_prefect_server_restarted_in_each_phase_leaves_no_vm(compute: FakeCompute, gcs: str, run_stack: Stack,
                                                                  tmp_path: Path) -> None:
    """The fault table's server column on gcp: in each phase, with the VM up, the Prefect server goes down and comes
    back on its database; the trial rides it out: completed to its budget, every phase recorded, no VM left."""
    from records import flow_runs, task_runs

    phases = ["provision", "setup", "train", "evaluate", "store", "teardown"]
    spec = _spec(gcs, compute)
    spec["backend"]["kind"] = "fault_backends:FaultyGcpBackend"
    path = _written(spec, tmp_path)
    resolved = config.resolve(spec)
    env = _run_env(compute, run_stack, tmp_path)
    env.update(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]),
               GYMFLOW_TEST_FAULT="pause@" + ",".join(phases), GYMFLOW_TEST_FAULT_DIR=str(tmp_path))
    proc = subprocess.Popen(_command("run", str(path)), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    said = run_stack.restart_at_each(proc, tmp_path, phases)
    assert proc.returncode == 0, said
    assert compute.vms == {}, "a VM outlived its trial"
    assert open_run(resolved.storage).read_json("status.json")["timesteps"] == resolved.budget.timesteps
    (flow,) = flow_runs(run_stack, resolved.storage)
    assert flow.state.type.value == "COMPLETED"
    assert task_runs(run_stack, flow.id) == {phase: ["COMPLETED"] for phase in phases}


def test_a_container_image_on_a_vm_image_without_python_says_what_the_wheel_needs(tmp_path: Path) -> None:
    """gymflow's wheel is downloaded on the VM (with its service account) before the container starts: that takes a
    Python on the VM's image, and a VM image without one ends the startup saying so."""
    import shutil

    from backends.gcp import startup
    from backends.gcp.settings import GcpBackendSpec

    script = startup.script(GcpBackendSpec(project="p", container_image=IMAGE_IN_REGISTRY), "gs://b/runs/t", "t", "0",
                            wheel=("gs://b/.gymflow/wheels/abc/g.whl", "g.whl", "abc"))
    image = tmp_path / "bin"  # a VM image with Docker and coreutils, and no Python
    image.mkdir()
    (image / "docker").write_text("#!/bin/sh\nexit 0\n")
    (image / "docker").chmod(0o755)
    (image / "mktemp").symlink_to(shutil.which("mktemp") or "/usr/bin/mktemp")
    done = subprocess.run(["/bin/bash", "-c", script], env={"PATH": str(image)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout.strip() == "gymflow-startup: FAILED: no python3 on the VM image to download gymflow's wheel with"


def test_a_vm_whose_deletion_never_happens_fails_the_teardown_saying_what_deletes_it(
        compute: FakeCompute, gcs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from backends.gcp import compute as gcp_compute

    monkeypatch.setattr(gcp_compute, "OPERATION_TIMEOUT_S", 3.0)
    backend, spec = _backend(_spec(gcs, compute))
    handle = backend.provision(spec)
    compute.stuck.add(handle.data["vm"])
    with pytest.raises(Exception, match=rf"VM {handle.data['vm']} in us-central1-a still exists 3 s after its deletion was "
                                        r"accepted; `gymflow gc --backend gcp` deletes it later, and its max_run_duration "
                                        r"at the latest"):
        backend.teardown(handle)
    compute.stuck.clear()
    backend.teardown(handle)  # the next teardown (a retry of the task, gc) finishes it
    assert compute.vms == {}
