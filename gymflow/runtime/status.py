"""status.json with a heartbeat thread, so a watcher can tell a live worker from a lost one."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from gymflow.results import STATUS_FILE, Status
from gymflow.storage import RunStore

logger = logging.getLogger(__name__)

HEARTBEAT_S = 5.0


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide what a trial computes."""
    from importlib.metadata import PackageNotFoundError, version
    import platform

    out = {"python": platform.python_version()}
    for dist in ("gymflow", "stable-baselines3", "sb3-contrib", "torch", "gymnasium", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


class StatusFile:
    """Owns status.json for one worker phase; a daemon thread refreshes the heartbeat."""

    def __init__(self, store: RunStore, interval_s: float = HEARTBEAT_S, on_beat: Callable[[], None] | None = None) -> None:
        self._store = store
        self._interval = interval_s
        self._on_beat = on_beat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.status = self._read_existing()

    def _read_existing(self) -> Status:
        if self._store.exists(STATUS_FILE):
            try:
                return Status.model_validate(self._store.read_json(STATUS_FILE))
            except ValueError:
                logger.warning("ignoring unreadable %s", STATUS_FILE)
        return Status()

    def start(self, **fields: Any) -> None:
        now = time.time()
        self.update(pid=os.getpid(), parent_pid=os.getppid(), host=socket.gethostname(), started_at=now, finished_at=None, error=None,
                    stop_reason=None, versions=library_versions(), **fields)
        self._thread = threading.Thread(target=self._beat, name="gymflow-heartbeat", daemon=True)
        self._thread.start()

    def update(self, **fields: Any) -> None:
        """Merge fields into the status and write it now."""
        with self._lock:
            self.status = self.status.model_copy(update={**fields, "heartbeat_at": time.time()})
            self._store.write_json(STATUS_FILE, self.status.model_dump(mode="json"))

    def set_progress(self, timesteps: int, episodes: int) -> None:
        """Record progress in memory; the next heartbeat writes it (cheap, called per step)."""
        self._progress = (timesteps, episodes)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if self._on_beat is not None:  # first, so a status that moved comes with the lines behind it
                    self._on_beat()
                timesteps, episodes = getattr(self, "_progress", (self.status.timesteps, self.status.episodes))
                self.update(timesteps=timesteps, episodes=episodes)
            except Exception:  # noqa: BLE001 - a failed heartbeat must not kill training
                logger.exception("heartbeat failed")

    def finish(self, state: str, **fields: Any) -> None:
        """Stop the heartbeat and write the final state."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 1)
        timesteps, episodes = getattr(self, "_progress", (self.status.timesteps, self.status.episodes))
        self.update(**{"state": state, "finished_at": time.time(), "timesteps": timesteps, "episodes": episodes, **fields})
