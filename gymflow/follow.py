"""Follow a run directory while its worker runs: status, new metric records, new log lines."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from gymflow.results import EVAL_METRICS, LOG_FILE, STATUS_FILE, TRAIN_METRICS, Status
from gymflow.storage import RunStore

logger = logging.getLogger(__name__)


@dataclass
class Update:
    """What appeared in the run dir since the previous poll."""

    status: Status | None
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)


class RunFollower:
    """Reads only complete new lines of the growing files, remembering where it stopped."""

    def __init__(self, store: RunStore, offsets: dict[str, int] | None = None) -> None:
        self.store = store
        self._offsets: dict[str, int] = dict(offsets or {})

    def skip_existing(self, *files: str) -> None:
        """Start following these files (default: all) at their current end (e.g. a resumed run's old log)."""
        for rel in files or (TRAIN_METRICS, EVAL_METRICS, LOG_FILE):
            self._offsets[rel] = len(self.store.read_from(rel, 0))

    def offsets(self, *files: str) -> dict[str, int]:
        """How far into each of these files (default: all) the lines returned so far go."""
        return {rel: self._offsets.get(rel, 0) for rel in files or (TRAIN_METRICS, EVAL_METRICS, LOG_FILE)}

    def _new_lines(self, rel: str) -> list[str]:
        offset = self._offsets.get(rel, 0)
        data = self.store.read_from(rel, offset)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offsets[rel] = offset + end + 1
        return data[: end + 1].decode("utf-8", errors="replace").splitlines()

    def _records(self, rel: str) -> list[dict[str, Any]]:
        out = []
        for line in self._new_lines(rel):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.debug("skipping a malformed line in %s", rel)
                continue
            if isinstance(record, dict) and "timesteps" in record:  # not a resume marker
                out.append(record)
        return out

    def status(self) -> Status | None:
        try:
            return Status.model_validate(self.store.read_json(STATUS_FILE))
        except (FileNotFoundError, ValueError):
            return None

    def poll(self) -> Update:
        return Update(self.status(), self._records(TRAIN_METRICS), self._records(EVAL_METRICS), self._new_lines(LOG_FILE))
