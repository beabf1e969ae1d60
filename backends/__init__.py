"""Where a trial runs: the backend contract, the registry, and the built-in backends."""

from backends.base import Backend, BackendError, Features, Handle, Timing, TransientBackendError, WorkerState
from backends.registry import available, create, notes, problems, resolve, settings_for_kind

__all__ = ["Backend", "BackendError", "Features", "Handle", "Timing", "TransientBackendError", "WorkerState", "available", "create", "notes", "problems", "resolve", "settings_for_kind"]
