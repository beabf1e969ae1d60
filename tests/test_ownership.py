"""One owner per run dir (the lease in owner.json), on a local folder, fake-gcs-server and Azurite."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import base_spec


def _owner(**fields: Any) -> bytes:
    now = time.time()
    record = {"token": "t-old", "trial_id": "ppo-s0-abc", "host": socket.gethostname(), "pid": 1, "since": now - 100,
              "renewed_at": now, "command": "gymflow run old.yaml", "flow_run_id": "f-old", **fields}
    return json.dumps(record).encode()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_is_refused_naming_the_owner(any_store: str) -> None:
    from gymflow.ownership import Lease, RunDirBusy
    from gymflow.storage import open_run

    store = open_run(f"{any_store}/run")
    first = Lease.acquire(store, "ppo-s0-abc", "flow-1", command="gymflow run spec.yaml")
    with pytest.raises(RunDirBusy) as refused:
        Lease.acquire(open_run(f"{any_store}/run"), "ppo-s0-abc", "flow-2")
    message = str(refused.value)
    assert f"is in use by `gymflow run spec.yaml` on {socket.gethostname()} (pid " in message
    assert "Prefect flow run flow-1) since 20" in message
    assert "wait for it to finish, or stop it (Ctrl-C where it runs, or cancel its flow run in the Prefect UI) and " \
           "rerun to resume from its newest checkpoint" in message
    first.release()
    again = Lease.acquire(open_run(f"{any_store}/run"), "ppo-s0-abc", "flow-2")
    assert again.previous is None  # released: nothing to reconcile
    again.release()


def test_of_runs_started_together_exactly_one_owns_the_run_dir(any_store: str) -> None:
    from gymflow.ownership import Lease, RunDirBusy
    from gymflow.storage import open_run

    won: list[Any] = []
    refused: list[str] = []
    start = threading.Barrier(4)

    def contend() -> None:
        start.wait()
        try:
            won.append(Lease.acquire(open_run(f"{any_store}/run"), "ppo-s0-abc"))
        except RunDirBusy as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 3


def test_a_dead_owner_on_this_machine_is_taken_over_at_once(any_store: str) -> None:
    from gymflow.ownership import OWNER_FILE, Lease
    from gymflow.storage import open_run

    store = open_run(f"{any_store}/run")
    store.write_bytes(OWNER_FILE, _owner(pid=_dead_pid()))
    lease = Lease.acquire(store, "ppo-s0-abc", "flow-new")
    assert lease.previous is not None and lease.previous.flow_run_id == "f-old"  # to be reconciled
    assert json.loads(store.read_bytes(OWNER_FILE))["flow_run_id"] == "flow-new"
    lease.release()


def test_a_run_dir_whose_owner_keeps_changing_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each takeover loses its compare-and-swap to another run's takeover, a few times over: refused, not looped."""
    from gymflow.ownership import _ATTEMPTS, OWNER_FILE, Lease, RunDirBusy
    from gymflow.storage import open_run

    store = open_run(str(tmp_path / "run"))
    dead = _dead_pid()
    store.write_bytes(OWNER_FILE, _owner(pid=dead))
    real_replace_if = store.replace_if
    racers: list[str] = []

    def lose_the_race(rel: str, data: bytes, version: str) -> bool:
        racers.append(f"t-racer-{len(racers)}")  # another run's takeover lands first (and dies in turn)
        store.write_bytes(OWNER_FILE, _owner(pid=dead, token=racers[-1]))
        return real_replace_if(rel, data, version)

    monkeypatch.setattr(store, "replace_if", lose_the_race)
    with pytest.raises(RunDirBusy) as refused:
        Lease.acquire(store, "ppo-s0-abc", "flow-new")
    assert str(refused.value) == (f"the run dir {store.uri} changed owner {_ATTEMPTS} times while this run tried to take "
                                  "it; another run is starting there: wait for it, or use another storage path")
    assert len(racers) == _ATTEMPTS and json.loads(store.read_bytes(OWNER_FILE))["token"] == racers[-1]


def test_an_owner_elsewhere_is_taken_over_only_when_its_lease_expired(any_store: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from gymflow.ownership import OWNER_FILE, Lease, RunDirBusy
    from gymflow.storage import open_run

    monkeypatch.setenv("GYMFLOW_LEASE_TTL_S", "30")
    store = open_run(f"{any_store}/run")
    store.write_bytes(OWNER_FILE, _owner(host="other-machine", pid=4242, renewed_at=time.time() - 5))
    with pytest.raises(RunDirBusy, match=r"on other-machine \(pid 4242.*if that machine is gone, the lease expires 30 s "
                                         r"after its last renewal"):
        Lease.acquire(store, "ppo-s0-abc")
    store.write_bytes(OWNER_FILE, _owner(host="other-machine", pid=4242, renewed_at=time.time() - 31))
    lease = Lease.acquire(store, "ppo-s0-abc")
    assert lease.previous is not None and lease.previous.host == "other-machine"
    lease.release()


def test_an_owner_whose_lease_was_taken_over_learns_it_and_stops(any_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gymflow.ownership import OWNER_FILE, Lease, RunDirBusy, lease_held
    from gymflow.storage import open_run

    monkeypatch.setenv("GYMFLOW_LEASE_TTL_S", "2")
    store = open_run(f"{any_store}/run")
    lease = Lease.acquire(store, "ppo-s0-abc").renewing()
    first_renewal = lease.owner.renewed_at
    deadline = time.monotonic() + 10
    while lease.owner.renewed_at == first_renewal and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lease.owner.renewed_at > first_renewal  # the heartbeat renews it
    _, version = store.read_versioned(OWNER_FILE)
    assert store.replace_if(OWNER_FILE, _owner(host="other-machine", token="t-new"), version)  # as a takeover does
    deadline = time.monotonic() + 10
    while lease.lost is None and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(RunDirBusy, match="another run took over the run dir .* this run stops"):
        lease_held(store.uri)
    lease.release()
    assert json.loads(store.read_bytes(OWNER_FILE))["token"] == "t-new"  # the release leaves the new owner alone


def test_a_run_dir_of_another_trial_is_refused_naming_the_fields(cli: Any, write_spec: Any, make_run: Any,
                                                                 mlflow_uri: str, tmp_path: Path) -> None:
    """A fixed storage path and changed hyperparameters: never resumed silently."""
    old = make_run(base_spec(storage=str(tmp_path / "fixed")))
    spec = base_spec(storage=old.uri)
    spec["algorithm"]["hyperparams"]["learning_rate"] = 0.001
    result = cli("run", write_spec(spec))
    assert result.code == 2, result.stderr
    assert (f"storage: the run dir {old.uri} holds another trial: its spec.json differs in "
            "algorithm.hyperparams.learning_rate: (unset) there, 0.001 now. Resuming it would report the old model as this "
            "trial. Put ${trial_id} in storage (the default does), use another storage path, or delete the run dir to "
            "start over") in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--older-than", "soon"], "--older-than 'soon': give a duration such as 90s, 30m, 6h or 2d"),
    (["--backend", "aws"], "--backend 'aws': not a backend; use one of azure, gcp, local"),
])
def test_gc_refuses_bad_options_before_looking_at_anything(cli: Any, args: list[str], message: str) -> None:
    result = cli("gc", *args)
    assert result.code == 2 and message in result.stderr and "Traceback" not in result.stderr
