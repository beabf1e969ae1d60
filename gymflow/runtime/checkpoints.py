"""Checkpoints in the run dir: model, VecNormalize stats, optional replay buffer, progress.

A checkpoint is the folder ``checkpoints/step_<timesteps>/``; it counts only once its
``meta.json`` is written, which happens last, so a worker killed mid-save leaves no
half checkpoint behind for the next run to trip over.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gymflow.results import MODEL_FILE, VECNORM_FILE
from gymflow.storage import RunStore

logger = logging.getLogger(__name__)

ROOT = "checkpoints"
META = "meta.json"
BUFFER_FILE = "replay_buffer.pkl"


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint."""

    folder: Path
    timesteps: int
    meta: dict[str, Any]

    @property
    def model(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def vecnormalize(self) -> Path | None:
        path = self.folder / VECNORM_FILE
        return path if path.exists() else None

    @property
    def replay_buffer(self) -> Path | None:
        path = self.folder / BUFFER_FILE
        return path if path.exists() else None


def save_model_files(model: Any, folder: Path, replay_buffer: bool = False) -> list[Path]:
    """Save model (+ VecNormalize stats, + replay buffer) into folder; return the files."""
    from stable_baselines3.common.vec_env import VecNormalize

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{MODEL_FILE}.tmp.zip"
    model.save(tmp)
    os.replace(tmp, folder / MODEL_FILE)
    files = [folder / MODEL_FILE]
    venv = model.get_vec_normalize_env()
    if isinstance(venv, VecNormalize):
        venv.save(str(folder / f".{VECNORM_FILE}.tmp"))
        os.replace(folder / f".{VECNORM_FILE}.tmp", folder / VECNORM_FILE)
        files.append(folder / VECNORM_FILE)
    if replay_buffer and hasattr(model, "save_replay_buffer"):
        model.save_replay_buffer(folder / f".{BUFFER_FILE}.tmp")
        os.replace(folder / f".{BUFFER_FILE}.tmp", folder / BUFFER_FILE)
        files.append(folder / BUFFER_FILE)
    return files


def _publish(store: RunStore, files: list[Path]) -> None:
    for path in files:
        store.publish(str(path.relative_to(store.workdir)))


def save(store: RunStore, model: Any, meta: dict[str, Any], keep: int, replay_buffer: bool) -> Checkpoint:
    """Write a checkpoint at the model's current timesteps and prune the oldest beyond keep."""
    timesteps = int(model.num_timesteps)
    rel = f"{ROOT}/step_{timesteps:012d}"
    folder = store.workdir / rel
    files = save_model_files(model, folder, replay_buffer)
    _publish(store, files)
    full_meta = {**meta, "timesteps": timesteps}
    store.write_json(f"{rel}/{META}", full_meta)
    logger.info("checkpoint saved at %d timesteps", timesteps)
    _prune(store, keep)
    return Checkpoint(folder, timesteps, full_meta)


def _complete(store: RunStore) -> list[Checkpoint]:
    found = []
    for rel in store.list(ROOT):
        if not rel.endswith(f"/{META}"):
            continue
        meta = store.read_json(rel)
        folder = store.fetch(rel).parent
        found.append(Checkpoint(folder, int(meta["timesteps"]), meta))
    return sorted(found, key=lambda c: c.timesteps)


def steps(store: RunStore) -> list[int]:
    """The timesteps of the complete checkpoints in the run dir, oldest first (a listing only, nothing fetched)."""
    found = []
    for rel in store.list(ROOT):
        parts = rel.split("/")
        if len(parts) == 3 and parts[2] == META and parts[1].startswith("step_") and parts[1][5:].isdigit():
            found.append(int(parts[1][5:]))
    return sorted(found)


def newest(store: RunStore) -> Checkpoint | None:
    """The newest complete checkpoint, or None."""
    complete = _complete(store)
    if not complete:
        return None
    best = complete[-1]
    for rel in store.list(str(best.folder.relative_to(store.workdir))):
        store.fetch(rel)
    return best


def _prune(store: RunStore, keep: int) -> None:
    for old in _complete(store)[:-keep]:
        rel = str(old.folder.relative_to(store.workdir))
        store.delete(f"{rel}/{META}")  # first: a prune cut short leaves an incomplete checkpoint, never a false one
        for file in store.list(rel):
            store.delete(file)
        shutil.rmtree(old.folder, ignore_errors=True)
