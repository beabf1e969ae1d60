"""The status of every machine a backend follows (VMs, jobs), from one list call per poll interval, shared by all
the trials of this process: a sweep of 50 trials costs one list call per interval, not 50 gets."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Board:
    """`listing()` returns {name: status} of every live machine; `of(name)` answers from a list at most
    `max_age_s` old, or one taken after the machine was created (a list from before it would not show it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = float("-inf")
        self.status: dict[str, str] = {}

    def of(self, listing: Callable[[], dict[str, str]], name: str, created_at: float, max_age_s: float) -> str | None:
        with self.lock:
            stale = time.monotonic() - self.at > max_age_s
            if stale or (name not in self.status and self.at < created_at):
                self.status = listing()
                self.at = time.monotonic()
            return self.status.get(name)
