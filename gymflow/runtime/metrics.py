"""Metrics as JSON lines in the run dir, written while training runs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import KVWriter


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class JsonlMetrics:
    """Appends one JSON object per record: {"timesteps": N, "time": t, name: value, ...}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

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
    """Every complete record of a JSON-lines file (a torn last line is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_after(path: Path, timesteps: int) -> None:
    """Drop records past a checkpoint, so a resumed run does not log them twice."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get("timesteps", 0) <= timesteps]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
