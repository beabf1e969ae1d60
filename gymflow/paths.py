"""Where gymflow keeps its own state on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """GYMFLOW_HOME, default ~/.gymflow: the background Prefect server's state and log, the caches."""
    return Path(os.environ.get("GYMFLOW_HOME", Path.home() / ".gymflow"))


def cache_dir() -> Path:
    """Where checks cache what they learnt (GYMFLOW_CACHE, default ~/.gymflow/cache); always safe to delete."""
    return Path(os.environ.get("GYMFLOW_CACHE") or home() / "cache")
