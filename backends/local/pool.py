"""Warm workers kept between the trials of one orchestrator process (local backend, sweeps).

A worker that has trained and evaluated a trial can wait, idle, to be handed the next
trial of the orchestrator that started it, sparing that trial a new Python with torch
and SB3 (a few CPU-seconds each: on a machine whose cores all train, that is time taken
from training). The pool is a folder per orchestrator pid and torch thread count:

- the worker writes `<pid>.idle` and waits;
- the orchestrator claims it by renaming that file to `<pid>.claimed` (atomic: the worker
  deleting its file on timeout and a claim cannot both succeed), then writes the run URI
  to `<pid>.job`; the worker takes the job and carries on as if started for that run.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

JOB_PATIENCE_S = 10.0


def pool_dir(orchestrator_pid: int, threads: str | int | None) -> Path:
    """The pool of the workers started by one orchestrator process with one torch thread setting."""
    return Path(tempfile.gettempdir()) / "gymflow-pool" / f"{orchestrator_pid}-t{threads or 'default'}"


def offer(pool: Path, seconds: float) -> str | None:
    """Worker side: wait idle in `pool` up to `seconds`; the run URI of the trial it is handed, or None."""
    pool.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    idle, job = pool / f"{me}.idle", pool / f"{me}.job"
    job.unlink(missing_ok=True)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # stopped while idle: leave the pool tidy
    try:
        idle.write_text(str(me))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not idle.exists():
                return _take(job)
            time.sleep(0.05)
        try:
            idle.unlink()
        except FileNotFoundError:
            return _take(job)  # claimed at the last moment
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)
        idle.unlink(missing_ok=True)
        tidy(pool)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def tidy(pool: Path) -> None:
    """Remove the pool's folder once nobody waits in it."""
    try:
        pool.rmdir()
    except OSError:
        pass  # not empty, or gone


def _take(job: Path) -> str | None:
    deadline = time.monotonic() + JOB_PATIENCE_S
    while time.monotonic() < deadline:
        try:
            run_uri = job.read_text(encoding="utf-8")
        except FileNotFoundError:
            time.sleep(0.01)
            continue
        job.unlink(missing_ok=True)
        return run_uri
    logger.warning("claimed from the pool but handed no run within %.0f s", JOB_PATIENCE_S)
    return None


def is_idle(pool: Path, pid: int) -> bool:
    return (pool / f"{pid}.idle").exists()


def claim(pool: Path, pid: int, run_uri: str) -> bool:
    """Orchestrator side: hand the idle worker `pid` the run `run_uri`; False when it is not idle (any more)."""
    claimed = pool / f"{pid}.claimed"
    try:
        os.rename(pool / f"{pid}.idle", claimed)
    except FileNotFoundError:
        return False
    tmp = pool / f"{pid}.job.tmp"
    tmp.write_text(run_uri, encoding="utf-8")
    os.replace(tmp, pool / f"{pid}.job")  # the worker never reads a half-written run URI
    claimed.unlink(missing_ok=True)
    return True


def idle_pids(pool: Path) -> list[int]:
    """The workers idle in `pool` now, oldest offer first."""
    found: list[tuple[float, int]] = []
    for path in pool.glob("*.idle") if pool.is_dir() else ():
        try:
            found.append((path.stat().st_mtime, int(path.stem)))
        except (FileNotFoundError, ValueError):
            continue  # claimed or given up meanwhile; or not ours
    return [pid for _, pid in sorted(found)]
