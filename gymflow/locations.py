"""Checks of where a trial writes: its run directory and its MLflow tracking store.

Run before anything is created, so that a run directory under a file or an MLflow server
that is down is an exit-2 message naming the field, not a traceback after provisioning.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gymflow.errors import Problem, excerpt

STORAGE_CHECK_ENV = "GYMFLOW_STORAGE_CHECK_S"
DEFAULT_STORAGE_CHECK_S = 10.0
TRACKING_CHECK_ENV = "GYMFLOW_TRACKING_CHECK_S"
DEFAULT_TRACKING_CHECK_S = 5.0
_MLFLOW_SCHEMES = {"", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433, "tcp": 8786, "tls": 8786, "http": 80, "https": 443}
_DB_PORTS = ("postgresql", "mysql", "mssql")


def storage_problems(uri: str, field: str = "storage", create: bool = False) -> list[Problem]:
    """Whether a run directory can be made at uri (create: the spec's create_bucket)."""
    from gymflow.storage import local_path

    if "\x00" in uri:
        return [Problem(field, "contains a NUL character; use a plain path")]
    path = local_path(uri)
    if path is None:
        scheme = urlparse(uri).scheme
        if scheme in ("gs", "az"):
            return _remote_problems(uri, field, create)
        return [Problem(field, f"unknown scheme {scheme!r} in {excerpt(uri)}; use a local path, file://, gs:// or az://")]
    return folder_problems(path, field, "the run directory")


_ROOTS_SEEN: set[str] = set()  # buckets (containers) found to exist by this process: asked once


def _remote_problems(uri: str, field: str, create: bool) -> list[Problem]:
    """A gs:// or az:// location names its bucket (account and container), the SDK is installed, credentials are
    found, and the bucket exists (or create_bucket asks provision to create it). The wait for the service is
    GYMFLOW_STORAGE_CHECK_S (default 10 s; 0 skips asking it)."""
    import importlib

    from gymflow.errors import StorageError, UserError
    from gymflow.paths import seconds
    from gymflow.storage import open_run
    from gymflow.storage.remote import RemoteRunStore

    module = importlib.import_module("gymflow.storage.gcs" if uri.startswith("gs://") else "gymflow.storage.azure")
    try:
        module._sdk()
        module.split(uri)
        wait = seconds(STORAGE_CHECK_ENV, DEFAULT_STORAGE_CHECK_S)
        if create or wait <= 0:
            return []
        store = open_run(uri)
        if not isinstance(store, RemoteRunStore) or store.root_uri in _ROOTS_SEEN:
            return []
        if not _within(wait, store.root_exists):
            return [Problem(field, store.missing_root())]
        _ROOTS_SEEN.add(store.root_uri)
    except UserError as exc:
        return [Problem(field, str(exc))]
    except (StorageError, TimeoutError) as exc:
        return [Problem(field, f"could not ask whether the bucket of {excerpt(uri)} exists: {exc}. Check the network "
                               f"and credentials, or set {STORAGE_CHECK_ENV}=0 to skip this check")]
    return []


def _within(seconds: float, fn: Callable[[], bool]) -> bool:
    """fn() in a daemon thread, waited for up to `seconds` (a client's own retries may take minutes)."""
    import threading

    box: list[Any] = []

    def call() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.append(exc)

    thread = threading.Thread(target=call, name="gymflow-storage-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        raise TimeoutError(f"no answer within {seconds:g} s")
    if isinstance(box[0], BaseException):
        raise box[0]
    return bool(box[0])


def folder_problems(path: Path, field: str, what: str) -> list[Problem]:
    """Whether a folder exists or can be created at path by this user."""
    try:
        path = path.absolute()
        node = path
        while not node.exists() and node != node.parent:
            node = node.parent
        if not node.is_dir():
            return [Problem(field, f"{node} is a file, so {what} {path} cannot be created under it; choose another path")]
        if not os.access(node, os.W_OK | os.X_OK):
            return [Problem(field, f"{what} {path} cannot be created: {node} is not writable for this user; "
                                   "choose another path")]
    except (OSError, ValueError) as exc:
        return [Problem(field, f"{what} {excerpt(str(path))} cannot be used: {getattr(exc, 'strerror', None) or exc}")]
    return []


def tracking_check_s() -> float:
    """How long to wait for the tracking server (GYMFLOW_TRACKING_CHECK_S, default 5 s; 0: no check)."""
    from gymflow.paths import seconds

    return seconds(TRACKING_CHECK_ENV, DEFAULT_TRACKING_CHECK_S)


def _plugin_schemes() -> set[str]:
    return {ep.name for ep in entry_points(group="mlflow.tracking_store")}


def tracking_problems(uri: str | None) -> list[Problem]:
    """Whether MLflow can use the tracking URI: a scheme it knows, a SQLite folder that exists, a server that
    answers within tracking_check_s(). The spec's tracking.uri, else MLFLOW_TRACKING_URI; None: MLflow's default."""
    field = "tracking.uri"
    if uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        field = "MLFLOW_TRACKING_URI"
    if uri is None:
        return []
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+", 1)[0]
    if len(parsed.scheme) == 1:  # a Windows drive letter
        scheme = ""
    if scheme not in _MLFLOW_SCHEMES and scheme not in _plugin_schemes():
        return [Problem(field, f"MLflow cannot track to {excerpt(uri)}: unknown scheme {parsed.scheme!r}. Use "
                               "sqlite:///mlflow.db, http(s)://HOST:PORT of an MLflow server, or postgresql://…")]
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            return folder_problems(Path(parsed.path if scheme else uri), field, "the MLflow store")
        return [Problem(field, f"{excerpt(uri)} is a file store, which MLflow 3 keeps only in maintenance mode; use "
                               "sqlite:///mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true)")]
    if scheme == "sqlite":
        database = uri.split("://", 1)[1].split("?", 1)[0].removeprefix("/")
        if database in ("", ":memory:"):
            return []
        return folder_problems(Path(database).parent, field, "the folder of the MLflow database")
    timeout = tracking_check_s()
    if timeout == 0 or scheme not in ("http", "https", *_DB_PORTS):
        return []
    why = _unreachable(parsed, scheme, timeout)
    if why is None:
        return []
    return [Problem(field, f"the MLflow tracking store {uri} cannot be reached ({why}; waited at most {timeout:g} s). "
                           f"Start it, or point tracking.uri or MLFLOW_TRACKING_URI at one that runs; "
                           f"{TRACKING_CHECK_ENV} sets the wait (0 skips this check)")]


def _unreachable(parsed: object, scheme: str, timeout: float) -> str | None:
    """Why nothing accepts a TCP connection at the URI's host and port (the scheme's default port), or None."""
    host = getattr(parsed, "hostname", None)
    try:
        port = getattr(parsed, "port", None)
    except ValueError:
        return "the port is not a number"
    if not host:
        return "no host in the URI"
    port = port or _DEFAULT_PORTS[scheme]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return "no answer"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def dask_problems(address: str, field: str) -> list[Problem]:
    """Whether the Dask scheduler a sweep is pointed at answers (tcp:// or tls://, within tracking_check_s())."""
    text = address if "://" in address else f"tcp://{address}"
    parsed = urlparse(text)
    if parsed.scheme not in ("tcp", "tls"):
        return [Problem(field, f"cannot reach a Dask scheduler at {excerpt(address)}: use tcp://HOST:PORT (or tls://)")]
    timeout = tracking_check_s()
    if timeout == 0:
        return []
    why = _unreachable(parsed, "tcp", timeout)
    if why is None:
        return []
    return [Problem(field, f"the Dask scheduler {address} cannot be reached ({why}; waited at most {timeout:g} s). Start it "
                           f"(dask scheduler --host 127.0.0.1), or leave sweep.dask_address and GYMFLOW_DASK_ADDRESS "
                           f"unset for a local cluster; {TRACKING_CHECK_ENV} sets the wait")]
