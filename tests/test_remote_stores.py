"""gs:// and az:// run directories: the real google-cloud-storage and azure-storage-blob clients against
fake-gcs-server and Azurite (no mocks)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import base_spec
from azurite import ACCOUNT


def test_a_run_dir_in_a_bucket_reads_writes_lists_and_deletes(bucket: str) -> None:
    from gymflow.storage import open_run

    store = open_run(f"{bucket}/runs/trial-1")
    assert not store.exists("status.json") and store.list() == []
    store.write_json("status.json", {"state": "running"})
    store.write_bytes("checkpoints/step_10/model.zip", b"\x00model")
    assert store.exists("status.json") and store.read_json("status.json") == {"state": "running"}
    assert store.list() == ["checkpoints/step_10/model.zip", "status.json"]
    assert store.list("checkpoints") == ["checkpoints/step_10/model.zip"]
    assert open_run(f"{bucket}/runs/trial-2").list() == []  # a sibling prefix is another run dir
    store.delete("status.json")
    store.delete("status.json")  # idempotent
    with pytest.raises(FileNotFoundError):
        store.read_bytes("status.json")


def test_a_follower_reads_only_what_is_new(bucket: str) -> None:
    from gymflow.storage import open_run

    store = open_run(f"{bucket}/run")
    assert store.read_from("metrics/train.jsonl", 0) == b""
    store.write_bytes("metrics/train.jsonl", b'{"a": 1}\n{"a": 2}\n')
    assert store.read_from("metrics/train.jsonl", 9) == b'{"a": 2}\n'
    assert store.read_from("metrics/train.jsonl", 18) == b""  # nothing past the end yet


def test_the_worker_publishes_from_its_workdir_and_readers_fetch(bucket: str) -> None:
    from gymflow.storage import open_run

    worker = open_run(f"{bucket}/run")
    (worker.workdir / "eval.json").parent.mkdir(parents=True, exist_ok=True)
    (worker.workdir / "eval.json").write_text('{"mean_reward": 500.0}')
    worker.publish("eval.json")
    reader = open_run(f"{bucket}/run")
    assert reader.read_json("eval.json") == {"mean_reward": 500.0}
    assert Path(reader.fetch("eval.json")).read_text() == '{"mean_reward": 500.0}'


@pytest.mark.parametrize(("uri", "message"), [
    ("gs://no-such-bucket-here/run", "the bucket 'no-such-bucket-here' does not exist: create it"),
    (f"az://{ACCOUNT}/no-such-container/run", f"the container 'no-such-container' does not exist in the storage account "
                                              f"'{ACCOUNT}': create it"),
])
def test_a_missing_bucket_is_one_clear_error(uri: str, message: str, emulator: str, azurite_connection: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from gymflow.errors import UserError
    from gymflow.storage import open_run

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection)
    with pytest.raises(UserError) as raised:
        open_run(uri).write_text("status.json", "{}")
    assert message in str(raised.value)


def test_a_write_with_a_wrong_account_key_is_refused_with_the_fix(azurite_connection: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gymflow.errors import UserError
    from gymflow.storage import open_run
    from gymflow.storage.azure import AzureRunStore

    name = f"denied-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection)
    AzureRunStore(f"az://{ACCOUNT}/{name}").create_container()
    wrong_key = azurite_connection.replace("AccountKey=Eby8", "AccountKey=AAAA")  # a key that signs wrongly
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong_key)
    with pytest.raises(UserError) as raised:
        open_run(f"az://{ACCOUNT}/{name}/run").write_text("status.json", "{}")
    assert (f"writing az://{ACCOUNT}/{name}/run/status.json was refused (403): the request's signature does not match "
            f"the storage account '{ACCOUNT}'; check the account key in AZURE_STORAGE_CONNECTION_STRING") in str(raised.value)


def test_missing_google_credentials_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gymflow.errors import UserError
    from gymflow.storage import open_run

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    with pytest.raises(UserError) as raised:
        open_run("gs://some-bucket/run")
    assert ("no Google Cloud credentials for gs:// storage: run `gcloud auth application-default login`, or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service account key file") in str(raised.value)


def test_a_spec_file_in_a_bucket_validates(gcs: str, cli: Any, tmp_path: Path) -> None:
    from gymflow.storage import open_run

    open_run(f"{gcs}/specs").write_text("cartpole.yaml", yaml.safe_dump(base_spec(storage=str(tmp_path / "runs"))))
    result = cli("validate", f"{gcs}/specs/cartpole.yaml")
    assert result.code == 0, result.stderr
    missing = cli("validate", f"{gcs}/specs/nope.yaml")
    assert missing.code == 2 and f"spec file not found: {gcs}/specs/nope.yaml. Check the URI." in missing.stderr


def test_transient_503s_and_dropped_connections_are_retried(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from fault_proxy import Faults, fault_proxy, upstream_of, via
    from gymflow.storage import open_run

    faults = Faults()
    with fault_proxy(upstream_of(bucket, dict(os.environ)), faults) as proxy:
        for key, value in via(bucket, dict(os.environ), proxy).items():
            monkeypatch.setenv(key, value)
        store = open_run(f"{bucket}/flaky")
        faults.fail_first, faults.seen = 2, 0
        store.write_text("status.json", '{"state": "running"}')
        faults.fail_first, faults.seen = 2, 0
        assert store.read_text("status.json") == '{"state": "running"}'
        assert faults.seen >= 3  # two 503s, then the call that went through
        faults.fail_first, faults.every_drop, faults.every_drop_after, faults.seen = 0, 3, 4, 0
        for i in range(6):
            store.write_text(f"f{i}.json", str(i))
        assert [store.read_text(f"f{i}.json") for i in range(6)] == [str(i) for i in range(6)]
        assert faults.injected >= 4


def test_a_growing_file_is_published_as_parts_followed_and_sealed(bucket: str) -> None:
    from gymflow.storage import open_run
    from gymflow.storage.remote import PARTS

    writer = open_run(f"{bucket}/grow")
    reader = open_run(f"{bucket}/grow")
    log = writer.open_log("worker.log")
    with log.open("ab") as fh:
        fh.write(b"one\ntw")  # a torn last line waits for its end
    writer.sync()
    assert reader.exists("worker.log") and reader.list() == ["worker.log"]
    assert reader.read_from("worker.log", 0) == b"one\n"
    with log.open("ab") as fh:
        fh.write(b"o\nthree\n")
    writer.sync()
    writer.sync()  # nothing new: nothing uploaded
    assert reader.read_from("worker.log", 4) == b"two\nthree\n"
    parts = writer._names(f"worker.log{PARTS}")  # type: ignore[attr-defined]
    assert [reader.read_bytes(p) for p in parts] == [b"one\n", b"two\nthree\n"]  # each sync sent only what was new
    writer.seal()
    assert writer._names(f"worker.log{PARTS}") == []  # type: ignore[attr-defined]
    assert reader.read_bytes("worker.log") == b"one\ntwo\nthree\n"
    assert reader.read_from("worker.log", 14) == b"" and reader.read_from("worker.log", 8) == b"three\n"

    # a later process (a resumed phase) appends after what was published, not after what a killed one left locally
    (writer.workdir / "worker.log").write_bytes(b"one\ntwo\nthree\nlost, never published\n")
    again = open_run(f"{bucket}/grow")
    with again.open_log("worker.log").open("ab") as fh:
        fh.write(b"four\n")
    again.sync()
    assert reader.read_from("worker.log", 14) == b"four\n"
    assert open_run(f"{bucket}/grow").fetch("worker.log").read_bytes() == b"one\ntwo\nthree\nfour\n"


def test_conditional_writes_let_one_writer_win_on_every_store(any_store: str) -> None:
    """create_bytes is create-only; replace_if holds only for the version read (what a lease needs)."""
    from gymflow.storage import open_run

    store = open_run(f"{any_store}/run")
    assert store.create_bytes("owner.json", b"first") is True
    assert store.create_bytes("owner.json", b"second") is False
    data, version = store.read_versioned("owner.json")
    assert data == b"first"
    assert store.replace_if("owner.json", b"third", version) is True
    assert store.replace_if("owner.json", b"stale writer", version) is False  # the version moved on
    data, newer = store.read_versioned("owner.json")
    assert data == b"third" and newer != version
    store.delete("owner.json")
    assert store.replace_if("owner.json", b"x", newer) is False  # gone
    with pytest.raises(FileNotFoundError):
        store.read_versioned("owner.json")
    assert store.create_bytes("owner.json", b"again") is True
