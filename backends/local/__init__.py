"""The local backend, and everything local in one room: the backend (`backend.py`), the pool of warm workers
(`pool.py`) and the worker's side of warm starts (`serve.py`)."""

from backends.local.backend import LocalBackend, release_idle_workers

__all__ = ["LocalBackend", "release_idle_workers"]
