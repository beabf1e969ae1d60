"""A run dir in a bucket or container (gs://, az://): the part common to both stores.

The worker writes under a local mirror (``workdir``) and publishes files; readers read the bucket.
Growing files are published as parts named by their byte offset (see the package's docstring).
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from pathlib import Path

from gymflow.storage import RunStore

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
