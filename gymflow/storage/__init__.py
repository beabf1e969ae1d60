"""Run-directory I/O. The worker and the orchestrator only talk to a run dir through this.

A run dir is addressed by a URI: a local path or ``file://`` now; ``gs://`` and
``az://`` stores implement the same interface. The worker writes files under
``RunStore.workdir`` (a local folder) and calls ``publish`` so a remote store can
upload them; for a local store the two are the same folder.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
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
        """The bytes of rel from offset on (b"" when rel is missing): for following growing files."""
        try:
            return self.read_bytes(rel)[offset:]
        except FileNotFoundError:
            return b""

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


class RemoteRunStore(RunStore):
    """A run dir in a bucket or container: the worker writes under a local mirror (``workdir``) and publishes
    files; readers read the bucket. Subclasses set ``prefix`` (the run dir's key prefix, no slashes around)."""

    prefix = ""

    def __init__(self, uri: str) -> None:
        super().__init__(uri.rstrip("/"))
        import hashlib

        from gymflow.paths import home

        self._workdir = home() / "run-cache" / hashlib.sha256(self.uri.encode()).hexdigest()[:16]

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

    def read_from(self, rel: str, offset: int) -> bytes:
        """Only the bytes from offset on (a ranged read): a follower pays for what is new, not the whole file."""
        from gymflow.errors import StorageError

        try:
            return self._read_range(rel, offset)
        except FileNotFoundError:
            return b""
        except StorageError as exc:
            if exc.status == 416:  # nothing past the end yet
                return b""
            raise

    @abstractmethod
    def _read_range(self, rel: str, offset: int) -> bytes:
        """The object's bytes from offset on; FileNotFoundError when it is missing."""

    def publish(self, rel: str) -> None:
        self.write_bytes(rel, (self.workdir / rel).read_bytes())

    def fetch(self, rel: str) -> Path:
        target = self.workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.read_bytes(rel))
        return target


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
