"""Where gymflow keeps its own state on this machine."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def home() -> Path:
    """GYMFLOW_HOME, default ~/.gymflow: the background Prefect server's state and log, the caches."""
    return Path(os.environ.get("GYMFLOW_HOME", Path.home() / ".gymflow"))


def cache_dir() -> Path:
    """Where checks cache what they learnt (GYMFLOW_CACHE, default ~/.gymflow/cache); always safe to delete."""
    return Path(os.environ.get("GYMFLOW_CACHE") or home() / "cache")


def read_cache(file: Path) -> dict[str, Any]:
    """A JSON cache file's mapping; {} when there is none yet or it is damaged (it is then written anew)."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(file: Path, data: dict[str, Any]) -> None:
    """Replace a JSON cache file at once (readers never see half of it); a cache that cannot be written is skipped."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        tmp.replace(file)
    except (OSError, ValueError):
        logger.debug("could not write the cache %s", file, exc_info=True)


def seconds(name: str, default: float) -> float:
    """A wait in seconds from the environment variable `name` (0 switches the check off); default when unset or not
    a number."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        logger.warning("%s=%r is not a number of seconds; using %g", name, raw, default)
        return default
