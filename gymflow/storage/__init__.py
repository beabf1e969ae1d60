"""Run-directory I/O. The worker and the orchestrator only talk to a run dir through this.

A run dir is addressed by a URI: a local path or ``file://``, ``gs://bucket/prefix`` or
``az://account/container/prefix``. The worker writes files under ``RunStore.workdir`` (a local
folder) and calls ``publish`` so a remote store can upload them; for a local store the two are
the same folder.

Growing files (metrics, logs) are written with ``open_log`` and made visible with ``sync``
(each heartbeat) and ``seal`` (the end of a phase). A remote store publishes only what was
appended since the last sync, as a part object named by its byte offset
(``metrics/train.jsonl.parts/0000000000001234``); readers follow with ``read_from``, which
reads the plain object and the parts as one file. ``seal`` writes the whole file once as a
plain object and drops its parts. So the cost of a heartbeat is bounded by what is new,
however long training runs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gymflow.errors import UserError

logger = logging.getLogger(__name__)


class RunStore(ABC):
    """One run directory."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @property
    @abstractmethod
    def workdir(self) -> Path:
        """A local folder mirroring the run dir, where the worker writes."""

    @abstractmethod
    def exists(self, rel: str) -> bool:
        """Whether the file rel exists in the run dir."""

    @abstractmethod
    def read_bytes(self, rel: str) -> bytes:
        """The content of rel; FileNotFoundError when it is missing."""

    @abstractmethod
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write rel atomically: readers see the old or the new content, never a mix."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Relative paths of the files under prefix, sorted."""

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Delete rel if it exists."""

    def read_from(self, rel: str, offset: int) -> bytes:
        """The bytes of rel from offset on (b"" when rel is missing): for following growing files. offset is 0 or
        where an earlier read_from of this file ended (what a follower has)."""
        try:
            return self.read_bytes(rel)[offset:]
        except FileNotFoundError:
            return b""

    # -- conditional writes: one writer wins, the others learn it ------------------------
    @abstractmethod
    def create_bytes(self, rel: str, data: bytes) -> bool:
        """Write rel only if it does not exist yet (atomically: of two writers, one wins); False when it exists."""

    @abstractmethod
    def read_versioned(self, rel: str) -> tuple[bytes, str]:
        """The content of rel and a token of this version of it; FileNotFoundError when it is missing."""

    @abstractmethod
    def replace_if(self, rel: str, data: bytes, version: str) -> bool:
        """Replace rel only if it is still the version read_versioned gave; False when it changed or is gone."""

    # -- growing files: one process appends, others follow ------------------------------
    def open_log(self, rel: str) -> Path:
        """Prepare workdir/rel for this process to append to, and return its path."""
        path = self.workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def sync(self) -> None:
        """Make the complete lines appended to the files opened with open_log visible in the run dir
        (a no-op where workdir is the run dir). Called at each heartbeat."""

    def seal(self) -> None:
        """Make everything appended to the files opened with open_log visible, each as one plain file
        (a no-op where workdir is the run dir). Called when a worker phase ends."""

    def publish(self, rel: str) -> None:
        """Make workdir/rel visible in the run dir (a no-op where workdir is the run dir)."""

    def fetch(self, rel: str) -> Path:
        """A local path holding rel (downloads it where the store is remote)."""
        return self.workdir / rel

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_text(rel))

    def write_json(self, rel: str, value: Any) -> None:
        self.write_text(rel, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


class LocalRunStore(RunStore):
    """A run dir on the local file system."""

    def __init__(self, uri: str, path: Path) -> None:
        super().__init__(uri)
        self.path = path

    @property
    def workdir(self) -> Path:
        return self.path

    def exists(self, rel: str) -> bool:
        return (self.path / rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()

    def _put(self, rel: str, data: bytes, place: Any) -> None:
        """Write data to a temporary file beside rel, then place(tmp, target) it: readers never see half of it."""
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            place(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)  # gone already after a replace; left after a link

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._put(rel, data, os.replace)

    def read_from(self, rel: str, offset: int) -> bytes:
        try:
            with (self.path / rel).open("rb") as fh:
                fh.seek(offset)
                return fh.read()
        except FileNotFoundError:
            return b""

    def list(self, prefix: str = "") -> list[str]:
        base = self.path / prefix
        if not base.exists():
            return []
        files = [p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]
        return sorted(str(p.relative_to(self.path)) for p in files)

    def delete(self, rel: str) -> None:
        (self.path / rel).unlink(missing_ok=True)

    def create_bytes(self, rel: str, data: bytes) -> bool:
        try:
            self._put(rel, data, os.link)  # a link fails when the target exists: all of it appears at once, or nothing
        except FileExistsError:
            return False
        return True

    @staticmethod
    def _version(stat: os.stat_result) -> str:
        # every write replaces the file by a new one (a new inode), so this changes with each write
        return f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"

    def read_versioned(self, rel: str) -> tuple[bytes, str]:
        with (self.path / rel).open("rb") as fh:
            return fh.read(), self._version(os.fstat(fh.fileno()))

    @contextmanager
    def _locked(self, rel: str) -> Iterator[Path]:
        """rel's path, with its sidecar lock held: conditional writes on one machine compare and swap under it."""
        import fcntl

        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with (target.parent / f".{target.name}.lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield target

    def replace_if(self, rel: str, data: bytes, version: str) -> bool:
        with self._locked(rel) as target:
            try:
                if self._version(target.stat()) != version:
                    return False
            except FileNotFoundError:
                return False
            self.write_bytes(rel, data)
            return True


def prepare(uri: str, create: bool) -> None:
    """Provision's part for the run dir: a local folder is made; a remote one's bucket (container) must exist, and is
    created when `create` (the spec's create_bucket) says so; otherwise its absence is a UserError saying how to fix it."""
    from gymflow.storage.remote import RemoteRunStore

    store = open_run(uri)
    if isinstance(store, LocalRunStore):
        store.path.mkdir(parents=True, exist_ok=True)
        return
    assert isinstance(store, RemoteRunStore)
    if store.root_exists():
        return
    if not create:
        raise UserError(store.missing_root())
    if store.create_root():
        logger.info("created the bucket of %s", uri)


def local_path(uri: str) -> Path | None:
    """The local folder of a plain path or file:// URI; None for a remote URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri).expanduser()
    return None


def common_parent(uris: list[str]) -> str:
    """The deepest folder that holds every one of the run dirs (local paths made absolute); where a sweep keeps
    what it writes about all its trials."""
    parts = []
    for uri in uris:
        path = local_path(uri)
        parts.append(str(path.resolve()) if path is not None else uri.rstrip("/"))
    split = [p.split("/") for p in parts]
    common: list[str] = []
    for pieces in zip(*split):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    if len(common) == len(split[0]) and len(split) == 1:
        common = common[:-1]  # one trial: its parent folder
    return "/".join(common) or "/"


def open_run(uri: str) -> RunStore:
    """The RunStore for a run-dir URI."""
    path = local_path(uri)
    if path is not None:
        return LocalRunStore(uri, path.resolve())
    scheme = urlparse(uri).scheme
    if scheme == "gs":
        from gymflow.storage.gcs import GcsRunStore

        return GcsRunStore(uri)
    if scheme == "az":
        from gymflow.storage.azure import AzureRunStore

        return AzureRunStore(uri)
    raise UserError(f"storage {uri!r}: unknown scheme {scheme!r}; use a local path, file://, gs:// or az://")
