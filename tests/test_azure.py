"""The azure backend against an Azure ML stand-in at the wire (tests/fake_azureml.py) and Azurite: the real
azure-ai-ml MLClient and azure-storage-blob, credentials from the real DefaultAzureCredential (the stand-in's
managed-identity endpoint), and each job run as a local process that runs the real agent and worker."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
def aml(tmp_path: Path, az_bucket: str, vm_python: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzureML]:
    """The stand-in, with DefaultAzureCredential and MLClient pointed at it. Its jobs run in the fake image's Python
    and see Azurite through the connection string (on Azure a job reaches its storage as the cluster's managed
    identity; Azurite takes OAuth over HTTPS only)."""
    from backends.azure import backend as azure_backend

    job_env = {**os.environ, "PATH": f"{vm_python}{os.pathsep}{os.environ.get('PATH', '')}", "CI": "true"}
    job_env.pop("VIRTUAL_ENV", None)
    with FakeAzureML(tmp_path / "aml", job_env) as fake:
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


def _run_env(aml: FakeAzureML, tmp_path: Path) -> dict[str, str]:
    """What `gymflow run` needs on top of the Prefect stack: DefaultAzureCredential's managed identity and MLClient's
    endpoint (the stand-in), the blob account (Azurite), an MLflow store."""
    return {**aml.credential_env(), "AZURE_STORAGE_CONNECTION_STRING": os.environ["AZURE_STORAGE_CONNECTION_STRING"],
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "GYMFLOW_HOME": str(tmp_path / "home")}


@pytest.mark.slow
def test_all_six_phases_in_jobs_and_a_preempted_job_is_resubmitted_resuming_to_exactly_the_budget(
        aml: FakeAzureML, az_bucket: str, run_stack: Stack, write_spec: Any, tmp_path: Path) -> None:
    """The whole path: cluster -> job (gymflow's wheel installed in it) -> agent -> worker -> az:// run dir ->
    orchestrator; the low-priority job's node is reclaimed during training, a second job resumes from the
    checkpoint; no job is left running."""
    spec = _spec(az_bucket, tier="low_priority", gymflow_install="wheel")
    spec.update(budget={"timesteps": 8192}, checkpoint={"every_timesteps": 1024},
                evaluation={"every_timesteps": 4096, "episodes": 1})
    path = write_spec(spec)
    resolved = config.resolve(spec)
    store = open_run(resolved.storage)
    proc = run_stack.start_gymflow("run", str(path), env=_run_env(aml, tmp_path))
    try:
        deadline = time.monotonic() + 300
        while not store.list("checkpoints/"):  # training is under way in the first job
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        (first,) = aml.active()
        aml.preempt(first.name)
        said = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, said
    assert f"job {first.name} ended Failed: the low-priority node running this job was preempted during train: " \
           "replacing it (1 of at most 3)" in said, said
    assert store.read_json("status.json")["timesteps"] == 8192  # resumed from the checkpoint, exactly the budget
    assert "resuming from the checkpoint at" in store.read_bytes("worker.log").decode()
    assert aml.active() == [], "a job outlived its trial"
    jobs = list(aml.jobs.values())
    assert len(jobs) == 2 and jobs[1].status == "Canceled"  # the second, cancelled at teardown
    second = jobs[1].log.read_text()
    assert "gymflow-job: gymflow build" in second and "is installed already" in second  # the first job installed it
    runs = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert [r.info.status for r in runs] == ["FINISHED"] and runs[0].data.tags["gymflow.preemptions"] == "1"
    assert store.read_json("eval.json")["n_episodes"] >= 1
    from gymflow import shipping

    wheel = shipping.wheel()  # the exact gymflow of the orchestrator went to the job
    account, container = az_bucket[len("az://"):].split("/")[:2]
    assert open_run(f"az://{account}/{container}/.gymflow/wheels/{wheel.build}").exists(wheel.filename)
    # the credentials' token appears nowhere: not in what was said, the jobs' logs, the run dir, MLflow
    from fake_azureml import TOKEN

    assert TOKEN not in said and all(TOKEN not in j.log.read_text() for j in jobs)
    assert all(TOKEN.encode() not in store.read_bytes(rel) for rel in store.list() if not rel.endswith(".zip"))
    assert all(TOKEN not in str(v) for r in runs for v in [*r.data.params.values(), *r.data.tags.values()])


@pytest.mark.slow
@pytest.mark.parametrize(("case", "message"), [
    ("quota", "backend.vm_size: no quota for Standard_ND96asr_v4 (dedicated) in workspace 'gymflow-ws' (resource group "
              "'gymflow-rg', subscription 00000000-0000-0000-0000-0000000000aa): Operation could not be completed as it "
              "results in exceeding approved Standard_ND96asr_v4 Family Cores quota. Location: eastus. (QuotaExceeded) "
              "Request a quota increase for its VM family (Azure portal: Azure Machine Learning > Quotas), or choose "
              "another vm_size or tier"),
    ("credentials", "backend: no Azure credentials found. Run `az login` (or set AZURE_CLIENT_ID, AZURE_TENANT_ID and "
                    "AZURE_CLIENT_SECRET for a service principal, or run where a managed identity is assigned), or name "
                    "a Prefect AzureMlCredentials block in backend.credentials_block"),
    ("workspace", "backend.workspace: workspace 'elsewhere' (resource group 'gymflow-rg', subscription "
                  "00000000-0000-0000-0000-0000000000aa) was not found: check backend.subscription_id, resource_group and "
                  "workspace (`az ml workspace list -g GROUP`)"),
])
def test_what_the_user_must_fix_exits_2_with_one_message_and_creates_nothing(
        aml: FakeAzureML, az_bucket: str, run_stack: Stack, write_spec: Any, tmp_path: Path, case: str, message: str) -> None:
    env = _run_env(aml, tmp_path)
    settings: dict[str, Any] = {}
    if case == "quota":
        aml.no_quota.add("Standard_ND96asr_v4")
        settings["vm_size"] = "Standard_ND96asr_v4"
    elif case == "credentials":
        env["IDENTITY_HEADER"] = "not-this-host"  # the managed identity refuses: no other credential is on this machine
    else:
        settings["workspace"] = "elsewhere"
    done = run_stack.gymflow("run", str(write_spec(_spec(az_bucket, **settings))), env=env)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert [line for line in said.splitlines() if line.startswith("refused:")] == [f"refused: {message}"], said
    assert all(message in line for line in said.splitlines() if "ERROR" in line), said  # no other error
    assert "Traceback" not in said
    assert aml.computes == {} and aml.jobs == {}


@pytest.mark.slow
def test_cancelling_the_flow_run_in_prefect_stops_the_worker_with_a_checkpoint_and_cancels_the_job(
        aml: FakeAzureML, az_bucket: str, run_stack: Stack, write_spec: Any, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    from records import flow_runs

    spec = _spec(az_bucket)
    spec.update(budget={"timesteps": 500_000}, checkpoint={"every_timesteps": 100_000})
    resolved = config.resolve(spec)
    store = open_run(resolved.storage)
    proc = run_stack.start_gymflow("run", str(write_spec(spec)), env=_run_env(aml, tmp_path))
    try:
        deadline = time.monotonic() + 300
        while not (store.exists("status.json") and store.read_json("status.json").get("state") == "running"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        (flow,) = flow_runs(run_stack, resolved.storage)
        with temporary_settings(updates={PREFECT_API_URL: run_stack.api_url}):
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow.id, Cancelling(), force=True)  # the Prefect UI's Cancel
        said = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    (flow,) = flow_runs(run_stack, resolved.storage)
    assert flow.state.type.value == "CANCELLED", said
    status = store.read_json("status.json")
    assert status["state"] == "interrupted" and 0 < status["timesteps"] < 500_000, status  # stopped early, on purpose
    assert store.list("checkpoints/"), "the worker did not checkpoint on its way out"
    assert [j.status for j in aml.jobs.values()] == ["Canceled"] and aml.active() == []


@pytest.mark.slow
def test_a_sweep_runs_its_jobs_in_parallel_and_compares_them(aml: FakeAzureML, az_bucket: str, run_stack: Stack,
                                                             write_spec: Any, tmp_path: Path) -> None:
    """`gymflow sweep` with backend azure: four trials, four jobs at once (the cluster's max_nodes), compared."""
    spec = _spec(az_bucket, max_nodes=4)
    spec["sweep"] = {"seeds": [0, 1, 2, 3]}
    done = run_stack.gymflow("sweep", str(write_spec(spec, "sweep.yaml")), env=_run_env(aml, tmp_path))
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert len(aml.jobs) == 4 and aml.peak == 4, said  # a job per trial, all at once
    assert aml.active() == [], "a job outlived its trial"
    assert "LocalCluster" not in said  # no local Dask cluster for trials that run in jobs
    assert "experimental class" not in said  # azure-ai-ml's notes about its own classes are not the user's business
    assert "best configuration: base" in said and "base: " in said  # compared
    runs = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 5  # the sweep's run and its four trials
    runs_dir = open_run(f"{az_bucket}/runs")
    statuses = [rel for rel in runs_dir.list() if rel.endswith("/status.json")]
    assert len(statuses) == 4 and all(runs_dir.read_json(rel)["timesteps"] == 512 for rel in statuses)


def test_gc_cancels_the_jobs_no_live_trial_owns_and_leaves_the_others(aml: FakeAzureML, az_bucket: str, write_spec: Any,
                                                                      cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from gymflow.cli import out
    from gymflow.ownership import Lease

    monkeypatch.setattr(out, "width", 500)  # the table's rows on one line each
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{write_spec(base_spec()).parent}/mlflow.db")
    backend, _ = _backend(_spec(az_bucket))
    live, dead = (config.resolve({**_spec(az_bucket), "seed": seed}) for seed in (0, 1))
    lease = Lease.acquire(open_run(live.storage), live.trial_id or "")  # this process runs the first trial
    dead_lease = Lease.acquire(open_run(dead.storage), dead.trial_id or "")
    dead_lease.release()  # the second trial's orchestrator let go, but its job was left running
    try:
        handles = []
        for spec in (live, dead):
            handles.append(backend.provision(spec))
            backend.setup(handles[-1], spec)
            backend.launch(handles[-1], "train")
        path = write_spec(_spec(az_bucket))
        looked = cli("gc", "--backend", "azure", "--spec", str(path), "--dry-run")
        assert looked.code == 0, looked.stdout + looked.stderr
        assert "would cancel the job" in looked.stdout and len(aml.active()) == 2
        done = cli("gc", "--backend", "azure", "--spec", str(path))
        assert done.code == 0, done.stdout + done.stderr
        assert "job cancelled" in done.stdout and "released" in done.stdout
        assert [j.name for j in aml.active()] == [handles[0].data["job"]]
    finally:
        lease.release()
        for handle in handles:
            backend.teardown(handle)
    assert aml.active() == []


def test_validate_refuses_a_run_dir_outside_blob_storage(write_spec: Any, cli: Any) -> None:
    spec = base_spec(backend={"kind": "azure"}, storage="/tmp/gymflow-runs/x")
    result = cli("validate", str(write_spec(spec)))
    said = result.stdout + result.stderr
    assert result.code == 2, said
    assert ("storage: backend azure keeps the run dir in blob storage, not '/tmp/gymflow-runs/x': set storage: "
            "az://ACCOUNT/CONTAINER/PREFIX/${trial_id}") in " ".join(said.split())


def test_validate_names_a_bad_azure_setting(write_spec: Any, cli: Any) -> None:
    spec = base_spec(backend={"kind": "azure", "compute": "9 nodes", "job_timeout": "30s", "tags": {"gymflow": "x"}},
                     storage="az://acct/runs/${trial_id}")
    said = (lambda r: (r.code, r.stdout + r.stderr))(cli("validate", str(write_spec(spec))))
    assert said[0] == 2, said
    assert "backend.compute" in said[1] and "a compute name is 2 to 32 letters, digits and -, starting with a letter" in said[1]
    assert "backend.job_timeout" in said[1] and "job_timeout must be between 1 minute and 90 days" in said[1]
    assert "backend.tags" in said[1] and "gymflow* names are gymflow's" in said[1]


def test_the_example_spec_validates_and_validate_estimates_what_it_costs(az_bucket: str, cli: Any) -> None:
    result = cli("validate", str(ROOT / "examples" / "azure-cartpole-ppo.yaml"), "--set",
                 f"storage={az_bucket}/runs/${{trial_id}}")
    said = " ".join((result.stdout + result.stderr).split())
    assert result.code == 0, said
    # a low-priority Standard_F4s_v2 node ($0.169/h dedicated, a fifth of it): 6 h and 2 idle minutes, up to 1 + 3 jobs
    assert ("cost: about $0.03 per hour of the trial's node (Standard_F4s_v2, low priority, stopped after 6h; resubmitted "
            "up to 3 times if preempted); at most $0.82 if its job runs to its time limit [an estimate from list prices "
            "for eastus as of 2026-11") in said


def test_a_sweep_estimate_counts_the_nodes_at_once_and_names_an_unpriced_size() -> None:
    from backends.azure import prices

    trials = [config.resolve({**_spec("az://acct/c", vm_size="Standard_NC4as_T4_v3", max_nodes=2), "seed": s})
              for s in range(3)]
    (note,) = backends.create(trials[0]).notes(trials, None)
    hourly = prices.SIZES["Standard_NC4as_T4_v3"]
    assert note.startswith(f"cost: about {prices.money(hourly)} per node-hour (Standard_NC4as_T4_v3, stopped after 24h); "
                           f"2 nodes at once: up to {prices.money(2 * hourly)} per hour; 3 trials: at most "
                           f"{prices.money(3 * hourly * (24 + 120 / 3600))}"), note
    odd = config.resolve(_spec("az://acct/c", vm_size="Standard_Q1"))
    assert backends.create(odd).notes([odd], None) == [f"cost: no price on record for VM size Standard_Q1; see {prices.SOURCE}"]


@pytest.mark.slow
def test_a_killed_orchestrator_leaves_a_job_that_gc_finds_and_azure_ml_stops_at_its_timeout(
        aml: FakeAzureML, az_bucket: str, run_stack: Stack, write_spec: Any, tmp_path: Path) -> None:
    import psutil

    aml.time_scale = 0.1  # the job's 300 s timeout runs out after 30 s here
    spec = _spec(az_bucket, job_timeout=300)
    spec.update(budget={"timesteps": 200_000})
    path = write_spec(spec)
    store = open_run(config.resolve(spec).storage)
    env = _run_env(aml, tmp_path)
    proc = run_stack.start_gymflow("run", str(path), env=env)
    deadline = time.monotonic() + 120
    while not (store.exists("status.json") and store.read_json("status.json").get("phase") == "train"):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.kill()  # the laptop went to sleep: no teardown
    proc.wait()
    (job,) = aml.active()
    assert job.body["properties"]["limits"]["timeout"] == "PT5M"
    looked = run_stack.gymflow("gc", "--backend", "azure", "--spec", str(path), "--dry-run", timeout=300,
                               env={**env, "COLUMNS": "2000"})
    assert looked.returncode == 0 and "would cancel the job" in looked.stdout, looked.stdout + looked.stderr
    assert aml.active() == [job]  # --dry-run cancels nothing
    while aml.active():  # Azure ML itself stops the job when its time is up
        assert time.time() - job.created < 60, "the job outlived its timeout"
        time.sleep(0.5)
    assert job.status == "Failed" and "timeout" in job.error
    assert not [p for p in psutil.process_iter(["cmdline"]) if store.uri in " ".join(p.info["cmdline"] or [])]
    done = run_stack.gymflow("gc", "--backend", "azure", "--spec", str(path), timeout=300, env={**env, "COLUMNS": "2000"})
    assert done.returncode == 0 and "flow run marked Crashed" in done.stdout, done.stdout + done.stderr  # records true


def test_429_and_503_are_retried(aml: FakeAzureML, az_bucket: str) -> None:
    aml.fail_next = [429, 503]
    backend, spec = _backend(_spec(az_bucket))
    handle = backend.provision(spec)
    assert aml.fail_next == [] and list(aml.computes) == ["gpu-cluster"]  # both refusals answered, then it went on
    backend.teardown(handle)


def test_polling_many_trials_costs_one_list_call_per_interval(aml: FakeAzureML, az_bucket: str) -> None:
    backend, _ = _backend(_spec(az_bucket, poll_s=30))
    handles = []
    for seed in range(3):
        spec = config.resolve({**_spec(az_bucket, poll_s=30), "seed": seed})
        handles.append(backend.provision(spec))
        backend.store(handles[-1]).write_json("spec.json", spec.model_dump(mode="json"))
        backend.launch(handles[-1], "train")
    try:
        before = len(aml.requests)
        for _ in range(5):  # five rounds of polling all three trials within one interval
            assert all(backend.poll(h, "train").running for h in handles)
        asked = aml.requests[before:]
        assert [(m, p.rsplit("/", 1)[-1]) for m, p, _ in asked] == [("GET", "jobs")] * len(asked) and len(asked) <= 1
    finally:
        for handle in handles:
            backend.teardown(handle)


@pytest.mark.slow
def test_a_worker_that_never_starts_fails_the_train_task_with_the_end_of_the_jobs_output(
        aml: FakeAzureML, az_bucket: str, run_stack: Stack, write_spec: Any, tmp_path: Path) -> None:
    spec = _spec(az_bucket, packages=["gymflow-no-such-package-anywhere==0.0.1"])
    done = run_stack.gymflow("run", str(write_spec(spec)), env=_run_env(aml, tmp_path))
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert ("the train worker ended (job gf-" in said and "ended Failed: the job's command exited with code 1) without "
            "writing status.json") in said
    assert "the job's output ends:" in said
    assert "gymflow-job: FAILED: pip could not install gymflow-no-such-package-anywhere==0.0.1" in said
    assert [j.status for j in aml.jobs.values()] == ["Failed"]  # not resubmitted: its node was not reclaimed


def test_a_cluster_that_exists_is_used_as_it_is_and_never_deleted(aml: FakeAzureML, az_bucket: str) -> None:
    from backends.azure import workspace

    backend, spec = _backend(_spec(az_bucket, vm_size="Standard_NC24ads_A100_v4"))
    workspace.Workspace(backend.settings).ensure_compute(backend.settings.model_copy(update={"vm_size": "Standard_F4s_v2"}))
    before = dict(aml.computes)
    handle = backend.provision(spec)
    assert handle.data["compute_existed"] is True and aml.computes == before  # not changed to the spec's vm_size
    assert len(aml.calls("PUT", r"/computes/")) == 1  # the one this test made
    backend.teardown(handle)
    assert aml.computes == before and not aml.calls("DELETE", r"/computes/")


def test_a_credentials_block_without_prefect_azure_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from backends.azure.workspace import credential

    monkeypatch.setitem(sys.modules, "prefect_azure", None)  # not installed
    with pytest.raises(UserError, match=r"backend.credentials_block: 'team-azure' needs prefect-azure \(pip install "
                                        r"prefect-azure\)"):
        credential("team-azure")


def test_a_registered_environment_is_named_in_the_job_and_nothing_is_uploaded_for_it(aml: FakeAzureML, az_bucket: str) -> None:
    backend, spec = _backend(_spec(az_bucket, environment="azureml:gymflow-env:3"))
    handle = backend.provision(spec)
    try:
        backend.setup(handle, spec)
        backend.launch(handle, "train")
        (job,) = aml.calls("PUT", r"/jobs/[^/]+$")
        assert job is not None and job["properties"]["environmentId"].endswith("/environments/gymflow-env/versions/3")
        assert aml.calls("PUT", r"/environments/") == []
    finally:
        backend.teardown(handle)


def test_a_rerun_follows_the_job_its_dead_orchestrator_left_instead_of_starting_a_second_agent(
        aml: FakeAzureML, az_bucket: str) -> None:
    backend, spec = _backend(_spec(az_bucket))
    first = backend.provision(spec)
    backend.setup(first, spec)
    backend.launch(first, "train")  # ... and the orchestrator dies here
    again = backend.provision(spec)  # the rerun, holding the lease now
    try:
        assert again.data["job"] == first.data["job"] and len(aml.active()) == 1
        backend.launch(again, "evaluate")
        assert len(aml.jobs) == 1  # handed to the same job's agent
    finally:
        backend.teardown(again)
    assert aml.active() == []
