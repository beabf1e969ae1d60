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
import threading
from abc import ABC, abstractmethod
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

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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


CREATE_HINT = ", or set create_bucket: true in the spec to have provision create it"
PARTS = ".parts"  # <file>.parts/<16-digit byte offset>: what a writer appended since its previous sync
_DELETERS = 8  # parallel deletes when sealing drops a long run's parts


class RemoteRunStore(RunStore):
    """A run dir in a bucket or container: the worker writes under a local mirror (``workdir``) and publishes
    files; readers read the bucket. Subclasses set ``prefix`` (the run dir's key prefix, no slashes around) and
    implement the object calls (``_exists``, ``read_bytes``, ``_read_range``, ``write_bytes``, ``_names``,
    ``delete``)."""

    prefix = ""

    def __init__(self, uri: str) -> None:
        super().__init__(uri.rstrip("/"))
        import hashlib

        from gymflow.paths import home

        self._workdir = home() / "run-cache" / hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self._appending: dict[str, int] = {}  # file opened with open_log -> bytes of it published
        self._lock = threading.Lock()

    @property
    def workdir(self) -> Path:
        return self._workdir

    def _key(self, rel: str) -> str:
        """The object name of a file of the run dir."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _listing(self, prefix: str) -> str:
        """The object-name prefix that lists the run dir's files under prefix."""
        return self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")

    def _relative(self, names: list[str]) -> list[str]:
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(name[cut:] for name in names)

    @staticmethod
    def _part(rel: str, offset: int) -> str:
        return f"{rel}{PARTS}/{offset:016d}"

    @property
    @abstractmethod
    def root_uri(self) -> str:
        """The bucket (account and container) as a URI."""

    @abstractmethod
    def root_exists(self) -> bool:
        """Whether the bucket (container) of the run dir exists."""

    @abstractmethod
    def create_root(self) -> bool:
        """Create the bucket (container) if it is missing; True when this call created it."""

    @abstractmethod
    def missing_root(self) -> str:
        """The message for a missing bucket (container): what it is and how to create it."""

    @abstractmethod
    def _exists(self, rel: str) -> bool:
        """Whether the object of rel exists."""

    @abstractmethod
    def _names(self, prefix: str) -> list[str]:
        """Relative names of every object under prefix, parts included, sorted."""

    @abstractmethod
    def _read_range(self, rel: str, offset: int) -> bytes:
        """The object's bytes from offset on; FileNotFoundError when it is missing."""

    def exists(self, rel: str) -> bool:
        return self._exists(rel) or self._exists(self._part(rel, 0))  # a growing file not sealed yet

    def list(self, prefix: str = "") -> list[str]:
        """The run dir's files; a growing file not sealed yet is listed once, by its own name."""
        return sorted({name.split(f"{PARTS}/")[0] for name in self._names(prefix)})

    def _get_or_none(self, rel: str, offset: int = 0) -> bytes | None:
        from gymflow.errors import StorageError

        try:
            return self._read_range(rel, offset) if offset else self.read_bytes(rel)
        except FileNotFoundError:
            return None
        except StorageError as exc:
            if exc.status == 416:  # nothing past the end yet
                return b""
            raise

    def read_from(self, rel: str, offset: int) -> bytes:
        """Only what is new from offset on: the part that starts there and those after it, or else the plain
        object's bytes from there (a sealed file) - so a follower pays for what is new, not the whole file."""
        out = bytearray()
        position = offset
        while True:
            data = self._get_or_none(self._part(rel, position))
            if data is None:
                data = self._get_or_none(rel, position) or b""
            if not data:
                return bytes(out)
            out += data
            position += len(data)

    def publish(self, rel: str) -> None:
        self.write_bytes(rel, (self.workdir / rel).read_bytes())

    def fetch(self, rel: str) -> Path:
        data = self.read_from(rel, 0)
        if not data and not self.exists(rel):
            raise FileNotFoundError(f"{self.uri}/{rel}")
        target = self.workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def open_log(self, rel: str) -> Path:
        """The mirror gets what the run dir holds first (replacing anything an earlier process on this machine
        appended but never published), so that what this process appends follows it."""
        with self._lock:
            path = super().open_log(rel)
            if rel not in self._appending:
                data = self.read_from(rel, 0)
                path.write_bytes(data)
                self._appending[rel] = len(data)
            return path

    def _push(self, rel: str, whole_lines: bool) -> None:
        """Upload what was appended to rel since the last push, as one part object named by its offset."""
        done = self._appending[rel]
        with (self.workdir / rel).open("rb") as fh:
            fh.seek(done)
            data = fh.read()
        if whole_lines:
            data = data[: data.rfind(b"\n") + 1]
        if data:
            self.write_bytes(self._part(rel, done), data)  # a retried upload rewrites the same bytes: harmless
            self._appending[rel] = done + len(data)

    def sync(self) -> None:
        with self._lock:
            for rel in list(self._appending):
                self._push(rel, whole_lines=True)

    def seal(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with self._lock:
            for rel in list(self._appending):
                self._push(rel, whole_lines=False)
                with (self.workdir / rel).open("rb") as fh:
                    self.write_bytes(rel, fh.read(self._appending[rel]))
                parts = self._names(f"{rel}{PARTS}")
                with ThreadPoolExecutor(_DELETERS) as pool:
                    list(pool.map(self.delete, parts))  # readers read the same bytes from the plain file now
            self._appending.clear()


def prepare(uri: str, create: bool) -> None:
    """Provision's part for the run dir: a local folder is made; a remote one's bucket (container) must exist, and is
    created when `create` (the spec's create_bucket) says so; otherwise its absence is a UserError saying how to fix it."""
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
