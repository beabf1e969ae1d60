"""Metrics as JSON lines in the run dir, written while training runs.

The files are only ever appended to (a remote run dir publishes them in parts). A phase that
resumes from a checkpoint first appends a marker, ``{"resumed_from": T}``: readers drop the
records past T that came before it (the killed attempt trained past its last checkpoint).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import KVWriter

RESUMED = "resumed_from"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class JsonlMetrics:
    """Appends one JSON object per record: {"timesteps": N, "time": t, name: value, ...}."""

    def __init__(self, path: Path, resumed_from: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")
        if resumed_from is not None:
            self._fh.write(json.dumps({RESUMED: int(resumed_from), "time": round(time.time(), 3)}) + "\n")
            self._fh.flush()

    def write(self, timesteps: int, values: dict[str, Any]) -> None:
        record: dict[str, Any] = {"timesteps": int(timesteps), "time": round(time.time(), 3)}
        for key, value in values.items():
            number = _number(value)
            if number is not None:
                record[key] = number
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class Sb3JsonlWriter(KVWriter):
    """An SB3 logger output that writes each dump as one JSON line."""

    def __init__(self, metrics: JsonlMetrics) -> None:
        self.metrics = metrics

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.metrics.write(step, key_values)

    def close(self) -> None:
        self.metrics.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines metrics file as the trial's timeline: a torn last line is skipped, and a resume
    marker drops the records past its checkpoint that came before it."""
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "timesteps" not in record and RESUMED in record:
            cut = record[RESUMED]
            records = [r for r in records if r.get("timesteps", 0) <= cut]
            continue
        records.append(record)
    return records
