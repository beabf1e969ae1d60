"""gymflow's background Prefect server: on a real PostgreSQL (Debian's package, a throwaway cluster on 127.0.0.1),
and a server that runs but does not answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import base_spec, workers_gone
from postgres import PASSWORD, Postgres, postgres
from prefect_stack import ROOT, free_port
from webhook import receiver, wait_for

FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres() as running:
        running.createdb("prefect")
        yield running


BAD = [
    (lambda pg: "mysql://root:hunter2@db/prefect",
     f"--database 'mysql://root:***@db/prefect': Prefect's server runs on PostgreSQL or SQLite; give {FORM}, or `sqlite` "
     f"for Prefect's default database file"),
    (lambda pg: f"postgresql://gymflow@127.0.0.1:{pg.port}",
     f"--database 'postgresql://gymflow@127.0.0.1:{{port}}': give host and database name, as {FORM}"),
    (lambda pg: pg.url("prefect", password="wrong"),
     f"--database: PostgreSQL at 127.0.0.1:{{port}} refused the password of user 'gymflow': fix USER:PASSWORD in {FORM}"),
    (lambda pg: pg.url("nope"),
     "--database: PostgreSQL at 127.0.0.1:{port} has no database 'nope': create it "
     "(`createdb -h 127.0.0.1 -p {port} -U gymflow nope`) or name an existing one"),
]


@pytest.mark.parametrize(("url", "message"), BAD, ids=["scheme", "no-database-name", "password", "missing-database"])
def test_a_bad_database_is_refused_before_any_server_starts(pg: Postgres, cli: Callable[..., Any], tmp_path: Path,
                                                             url: Callable[[Postgres], str], message: str) -> None:
    result = cli("server", "start", "--port", str(free_port()), "--database", url(pg))
    assert result.code == 2
    assert " ".join(result.stderr.split()) == f"error: {message.format(port=pg.port)}"
    assert "Traceback" not in result.stderr and "wrong" not in result.stderr and "hunter2" not in result.stderr
    assert not (tmp_path / "gymflow-home" / "server.json").exists()  # nothing started
    assert not (tmp_path / "gymflow-home" / "database.json").exists()  # nothing remembered


def test_a_database_nobody_serves_is_refused(cli: Callable[..., Any]) -> None:
    port = free_port()
    result = cli("server", "start", "--database", f"postgresql://gymflow:pw@127.0.0.1:{port}/prefect")
    assert result.code == 2
    said = " ".join(result.stderr.split())
    assert said.startswith(f"error: --database: nothing answers at 127.0.0.1:{port} (")
    assert said.endswith(f"): start PostgreSQL there, or fix HOST:PORT in {FORM}")


def test_a_live_server_that_does_not_answer_is_named_and_never_doubled(cli: Callable[..., Any], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from gymflow.cli import server

    monkeypatch.setattr(server, "BUSY_PATIENCE_S", 1.0)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        url = f"http://127.0.0.1:{free_port()}"  # nothing answers there
        state = tmp_path / "gymflow-home" / "server.json"
        state.parent.mkdir(parents=True)
        state.write_text(json.dumps({"pid": alive.pid, "url": url, "log": "/var/log/prefect.log"}))
        result = cli("server", "start")
        assert result.code == 1
        assert " ".join(result.stderr.split()) == (
            f"failed: GymflowError: the background Prefect server (pid {alive.pid}) runs but has not answered at {url} "
            f"for 1 s; see /var/log/prefect.log, or stop it with `gymflow server stop` (set GYMFLOW_DEBUG=1 to see the "
            f"traceback)")
        assert json.loads(state.read_text())["pid"] == alive.pid  # no second server started beside it
    finally:
        alive.kill()
        alive.wait()


def _gymflow(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gymflow", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _wait_for_training(runs: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not any(path.stat().st_size for path in runs.glob("*/metrics/train.jsonl")):
        assert time.monotonic() < deadline, f"no training metrics under {runs} after {timeout:.0f} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_the_background_server_on_postgresql_records_runs_and_marks_vanished_ones_crashed(pg: Postgres, tmp_path: Path) -> None:
    """`gymflow server start --database`, then `gymflow run` killed outright: the heartbeat watch, applied by
    itself on PostgreSQL, marks the run Crashed in PostgreSQL and the crash alert goes out once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(GYMFLOW_HOME=str(tmp_path / "gymflow-home"), PREFECT_HOME=str(tmp_path / "prefect-home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    started = _gymflow(env, "server", "start", "--port", str(free_port()), "--database", pg.url("prefect"))
    try:
        said = started.stdout + started.stderr
        assert started.returncode == 0, said
        assert f"on PostgreSQL postgresql+asyncpg://gymflow:***@127.0.0.1:{pg.port}/prefect" in said
        status = _gymflow(env, "server", "status")
        assert f"on PostgreSQL postgresql+asyncpg://gymflow:***@127.0.0.1:{pg.port}/prefect" in status.stdout
        assert PASSWORD not in said + status.stdout + status.stderr
        for private in ("server.json", "database.json"):  # they hold the password: the owner's eyes only
            assert (tmp_path / "gymflow-home" / private).stat().st_mode & 0o077 == 0
        switched = _gymflow(env, "server", "start", "--database", "sqlite")
        assert switched.returncode == 2
        assert "--database: the background Prefect server already runs at" in switched.stderr
        assert "stop it first (`gymflow server stop`)" in " ".join(switched.stderr.split())

        with receiver() as (url, received):
            applied = _gymflow(env, "alerts", "apply", "--webhook", url)
            assert applied.returncode == 0, applied.stdout + applied.stderr
            assert applied.stdout.count("automation gymflow:") == 4
            assert "gymflow: unresponsive run marked crashed" in applied.stdout  # the heartbeat watch, by itself

            automations = yaml.safe_load((ROOT / "deployments" / "automations-postgresql.yaml").read_text())
            (watch,) = automations["automations"]
            assert watch["trigger"]["within"] >= 3 * 180  # three of Prefect's default heartbeat intervals
            watch["trigger"]["within"] = 50  # this run sends a heartbeat every 30 s, Prefect's shortest
            quick = tmp_path / "quick.yaml"
            quick.write_text(yaml.safe_dump(automations))
            assert _gymflow(env, "alerts", "apply", "--file", str(quick), "--webhook", url).returncode == 0

            spec = base_spec(name="vanishing", budget={"timesteps": 1_000_000}, storage=str(tmp_path / "runs" / "${trial_id}"),
                             tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
            spec_file = tmp_path / "vanishing.yaml"
            spec_file.write_text(yaml.safe_dump(spec))
            run = subprocess.Popen([sys.executable, "-m", "gymflow", "run", str(spec_file)], cwd=tmp_path,
                                   env={**env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_for_training(tmp_path / "runs")
            os.kill(run.pid, signal.SIGKILL)  # no flow code runs after this, and no Prefect worker watches it
            run.wait()
            killed = time.monotonic()
            (run_dir,) = (tmp_path / "runs").iterdir()
            (row,) = pg.query("prefect", "select id, name, state_type from flow_run where name like 'vanishing-%'")
            assert row[2] == "RUNNING"  # in PostgreSQL: what the UI shows until the heartbeats are missed

            wait_for(received, 1, timeout=180, settle=20)
            assert len(received) == 1, received  # once: on SQLite the same event was redelivered four times
            assert time.monotonic() - killed > 10  # the window after the last heartbeat, not at once
            alert = received[0]
            assert alert["subject"] == f"gymflow: trial {row[1]} crashed"
            assert "no heartbeat from the process running this flow" in alert["body"]
            api = _gymflow(env, "server", "status").stdout.split("running at ")[1].split()[0]
            state = httpx.get(f"{api}/api/flow_runs/{row[0]}", timeout=30).json()["state"]
            assert state["type"] == "CRASHED" and "presumed gone" in state["message"]
            assert pg.query("prefect", f"select state_type from flow_run where id = '{row[0]}'") == [["CRASHED"]]
            assert workers_gone(run_dir), "the training worker outlived the killed `gymflow run`"
    finally:
        _gymflow(env, "server", "stop")
