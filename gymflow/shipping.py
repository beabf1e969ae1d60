"""The gymflow this orchestrator runs, as a wheel for a cloud machine to install: the exact code, no index needed.

The wheel is built from the installed packages (gymflow, backends, tasks, flows; an editable install
too) and the distribution's own METADATA and entry points, with a `gymflow/_build.py` naming the build: a
hash of the code. A machine checks that name to skip installing what it has already (a prepared image).
The archive is deterministic, so one code version uploads one wheel.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import logging
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("gymflow", "backends", "tasks", "flows")
BUILD_MODULE = "gymflow/_build.py"
_EPOCH = (1980, 1, 1, 0, 0, 0)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wheel:
    filename: str
    data: bytes
    build: str  # the code's hash, also in gymflow/_build.py


def _package_files() -> list[tuple[str, bytes]]:
    files = []
    for package in PACKAGES:
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise RuntimeError(f"package {package!r} of gymflow is not importable here")
        root = Path(list(found.submodule_search_locations)[0])
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
                rel = f"{package}/{path.relative_to(root).as_posix()}"
                if rel != BUILD_MODULE:
                    files.append((rel, path.read_bytes()))
    return files


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@lru_cache(maxsize=1)
def wheel() -> Wheel:
    """This gymflow as a py3-none-any wheel (built once per process)."""
    dist = metadata.distribution("gymflow")
    version = dist.version
    files = _package_files()
    digest = hashlib.sha256()
    for rel, data in files:
        digest.update(rel.encode() + b"\0" + data + b"\0")
    build = digest.hexdigest()[:16]
    info = f"gymflow-{version}.dist-info"
    files.append((BUILD_MODULE, f'"""The build of this gymflow (gymflow.shipping)."""\n\nBUILD = "{build}"\n'.encode()))
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")  # an editable install may carry PKG-INFO
    if not text:
        raise RuntimeError("the installed gymflow distribution has no METADATA")
    files.append((f"{info}/METADATA", text.encode()))
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        files.append((f"{info}/entry_points.txt", entry_points.encode()))
    files.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: gymflow.shipping\nRoot-Is-Purelib: true\nTag: py3-none-any\n"))
    record = "".join(f"{rel},{_record_hash(data)},{len(data)}\n" for rel, data in files) + f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel, data in files:
            entry = zipfile.ZipInfo(rel, date_time=_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    return Wheel(filename=f"gymflow-{version}-py3-none-any.whl", data=buffer.getvalue(), build=build)


def installed_build() -> str | None:
    """The build of the gymflow running here, when it was installed from such a wheel."""
    try:
        from gymflow import _build  # type: ignore[attr-defined]
    except ImportError:
        return None
    return str(_build.BUILD)


def upload(root: str) -> tuple[str, str, str]:
    """This gymflow's wheel under ROOT/.gymflow/wheels/BUILD/ (a bucket or container; uploaded once per code
    version, create-only): (its URI, its file name, the build), for a cloud machine to install."""
    from gymflow.storage import open_run

    built = wheel()
    folder = f"{root.rstrip('/')}/.gymflow/wheels/{built.build}"
    if open_run(folder).create_bytes(built.filename, built.data):
        logger.info("gymflow's wheel uploaded to %s/%s", folder, built.filename)
    return f"{folder}/{built.filename}", built.filename, built.build
