"""The records stay true after a crash: `gymflow run` as a user starts it (a subprocess against a real Prefect
server), killed, interrupted or started twice; then what Prefect, MLflow and the run dir say."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import base_spec, workers_gone
from prefect_stack import ROOT, Stack
from records import flow_runs, mlflow_runs, trained

pytestmark = pytest.mark.slow

BUDGET = 16_000


@pytest.fixture
def stack(run_stack: Stack) -> Stack:
    return run_stack


def _spec(tmp_path: Path, budget: int = BUDGET) -> Path:
    spec = base_spec(budget={"timesteps": budget}, storage=str(tmp_path / "run"),
                     evaluation={"every_timesteps": 4000, "episodes": 2}, checkpoint={"every_timesteps": 4000})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _env(stack: Stack, tmp_path: Path) -> dict[str, str]:
    return {**stack.env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "GYMFLOW_HOME": str(tmp_path / "home")}


def _start(spec: Path, env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "gymflow", "run", str(spec)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def _wait(predicate: Any, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _forwarded(run: Path) -> int:
    try:
        return int(json.loads((run / "tracking.json").read_text())["forwarded"].get("metrics/train.jsonl", 0))
    except (OSError, ValueError, KeyError):
        return 0


def _mlflow_runs(tmp_path: Path) -> list[Any]:
    return mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")


def test_a_killed_run_is_resumed_by_the_next_as_one_record(stack: Stack, tmp_path: Path) -> None:
    """SIGKILL of `gymflow run` mid-training, then a rerun: one MLflow run with a gap-free curve, FINISHED; the
    killed flow run Crashed; eval.json and the CLI name the same model."""
    from mlflow.tracking import MlflowClient

    from gymflow.runtime.metrics import read_jsonl

    spec, run, env = _spec(tmp_path), tmp_path / "run", _env(stack, tmp_path)
    first = _start(spec, env, tmp_path / "first.out")
    _wait(lambda: _forwarded(run) > 0 and trained(run) >= 3000, "training metrics forwarded to MLflow")
    first.send_signal(signal.SIGKILL)
    first.wait()
    _wait(lambda: workers_gone(run), "the orphaned worker to checkpoint and stop", 60)
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"

    second = subprocess.run([sys.executable, "-m", "gymflow", "run", str(spec)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert "the previous run of this trial died" in output and "marking its records and resuming" in output

    flows = flow_runs(stack, run)
    assert [f.state.type.value for f in flows] == ["CRASHED", "COMPLETED"]
    assert "died; trial taken over by a new run" in (flows[0].state.message or "")

    runs = _mlflow_runs(tmp_path)
    assert len(runs) == 1, "a resumed trial continues its MLflow run"
    record = runs[0]
    assert record.info.status == "FINISHED" and record.data.tags["gymflow.attempts"] == "2"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    steps = [m.step for m in client.get_metric_history(record.info.run_id, "time/fps")]
    timeline = [r["timesteps"] for r in read_jsonl(run / "metrics" / "train.jsonl") if "time/fps" in r]
    assert sorted(steps) == sorted(timeline), "every record of the run dir is in MLflow once: no gap, no repeat"
    assert len(steps) == len(set(steps)) and max(steps) >= BUDGET - 128

    report = json.loads((run / "eval.json").read_text())
    assert report["trained_timesteps"] == BUDGET and report["model"] in ("best", "final")
    which = (f"the best model (at {report['timesteps']} of {BUDGET} timesteps)" if report["timesteps"] != BUDGET
             else f"the {report['model']} model")
    assert f"of {which}" in output and f"trained {BUDGET} timesteps" in output
    assert record.data.tags["gymflow.evaluated_model"].startswith(which)


def test_ctrl_c_ends_as_cancelled_with_how_to_resume(stack: Stack, tmp_path: Path) -> None:
    spec, run, env = _spec(tmp_path), tmp_path / "run", _env(stack, tmp_path)
    proc = _start(spec, env, tmp_path / "out.txt")
    _wait(lambda: trained(run) >= 1000, "training to start")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130
    output = (tmp_path / "out.txt").read_text()
    last = [line for line in output.splitlines() if line.strip()][-2]  # before the memory line
    assert last.startswith("cancelled: trial ") and "interrupted (Ctrl-C); the worker stopped and teardown is done. " \
        "Run the same spec again to resume from its checkpoint at " in last, output[-3000:]
    assert [f.state.type.value for f in flow_runs(stack, run)] == ["CANCELLED"]
    assert _mlflow_runs(tmp_path)[0].info.status == "KILLED"
    assert json.loads((run / "owner.json").read_text())["released_at"] is not None
    assert workers_gone(run)


def test_two_runs_of_one_trial_started_together_one_is_refused(stack: Stack, tmp_path: Path) -> None:
    spec, run, env = _spec(tmp_path, budget=1024), tmp_path / "run", _env(stack, tmp_path)
    procs = [_start(spec, env, tmp_path / f"out-{i}.txt") for i in range(2)]
    codes = sorted(p.wait(600) for p in procs)
    outputs = [(tmp_path / f"out-{i}.txt").read_text() for i in range(2)]
    assert codes == [0, 2], outputs
    refused = next(o for o in outputs if "completed:" not in o)
    assert f"the run dir {run} is in use by `gymflow run {spec}` on " in refused, refused[-2000:]
    assert "Traceback" not in refused
    steps = [json.loads(line)["timesteps"] for line in (run / "metrics" / "train.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "one worker trained"
    assert len(_mlflow_runs(tmp_path)) == 1


def test_gc_ends_the_records_of_a_dead_run_and_leaves_a_live_one_alone(stack: Stack, tmp_path: Path) -> None:
    env = {**_env(stack, tmp_path), "COLUMNS": "500"}  # the table's rows on one line each
    dead_dir, live_dir = tmp_path / "dead", tmp_path / "live"
    dead_dir.mkdir()
    live_dir.mkdir()
    dead = _start(_spec(dead_dir), env, tmp_path / "dead.out")
    _wait(lambda: _forwarded(dead_dir / "run") > 0, "the first trial to train")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    live = _start(_spec(live_dir, budget=200_000), env, tmp_path / "live.out")
    try:
        _wait(lambda: _forwarded(live_dir / "run") > 0, "the second trial to train")
        gymflow = [sys.executable, "-m", "gymflow", "gc"]
        listed = subprocess.run([*gymflow, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.count("would mark") == 1 and "would mark the flow run Crashed, tear down" in listed.stdout
        assert "is dead" in listed.stdout and str(live_dir) not in listed.stdout, listed.stdout
        assert [f.state.type.value for f in flow_runs(stack, dead_dir / "run")] == ["RUNNING"]  # a dry run changes nothing

        done = subprocess.run(gymflow, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "flow run marked Crashed, torn down, MLflow run marked FAILED" in done.stdout, done
        assert [f.state.type.value for f in flow_runs(stack, dead_dir / "run")] == ["CRASHED"]
        assert [f.state.type.value for f in flow_runs(stack, live_dir / "run")] == ["RUNNING"]
        statuses = {r.data.tags["gymflow.run_uri"]: r.info.status for r in _mlflow_runs(tmp_path)}
        assert statuses == {str(dead_dir / "run"): "FAILED", str(live_dir / "run"): "RUNNING"}
        assert workers_gone(dead_dir / "run")
        again = subprocess.run(gymflow, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert "nothing to collect" in again.stdout
    finally:
        live.send_signal(signal.SIGINT)
        live.wait(120)


def test_gc_leaves_a_run_whose_run_dir_it_cannot_read_alone_and_judges_the_others(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A run dir out of reach from where gc runs (another cloud's store, no credentials here) is one row saying so,
    not the end of gc."""
    from mlflow.tracking import MlflowClient

    from tasks import gc as reaper

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("elsewhere")
    run = client.create_run(experiment, tags={"gymflow.run_uri": "az://Not_An_Account/runs/t", "gymflow.trial_id": "t"})
    found = reaper.collect(dry_run=True, prefect=False, tracking_uri=uri)
    assert [(o.kind, o.id, o.action) for o in found] == [
        ("MLflow run", run.info.run_id, "left alone: run gc where its store's credentials are")]
    assert found[0].reason == ("its run dir could not be read from here: 'az://Not_An_Account/runs/t': 'Not_An_Account' is "
                               "not a storage account name: 3-24 lowercase letters and digits (az://ACCOUNT/CONTAINER/PREFIX)")
