"""The worker's side of the local backend's warm starts: a worker that is started before it is needed, kept after
training for the evaluate phase, or kept after its trial for the next one.

- Started during setup (``--wait``), it writes ``worker.waiting`` (its pid) in the run dir's local folder, loads
  torch and SB3, and waits; the train phase claims it by renaming the marker.
- After training (``--standby``), it writes ``worker.standby`` and waits to be claimed for the evaluate phase.
- After evaluating (``--reuse``), it waits idle in its orchestrator's pool (``pool.py``) to be handed a next trial.

A claim is an atomic rename, and a worker that gives up deletes its marker: only one of the two can succeed,
so exactly one side decides. The plain worker (`gymflow worker train RUN_URI`) knows none of this.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from backends.local import pool
from gymflow.storage import RunStore, open_run
from gymflow.worker import PARENT_ENV, watch_parent

logger = logging.getLogger(__name__)

STANDBY_FILE = "worker.standby"  # a trained worker waiting to be handed the evaluate phase
WAITING_FILE = "worker.waiting"  # a worker started during setup, waiting to be handed the train phase


def wait_to_be_claimed(store: RunStore, marker: str, seconds: float, warm_up: Callable[[], object] | None = None) -> bool:
    """Write `marker` (this pid) in the run dir's local folder, warm up, and wait up to `seconds` to be claimed;
    True when claimed."""
    watch_parent()  # an orchestrator that disappears meanwhile takes this worker with it
    path = store.workdir / marker
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))
    if warm_up is not None:
        warm_up()  # e.g. import torch and SB3 while the orchestrator finishes setting up
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not path.exists():
            return True
        time.sleep(0.02)
    try:
        path.unlink()
    except FileNotFoundError:
        return True  # claimed at the last moment
    return False


def next_trial(seconds: float) -> str | None:
    """Wait idle in the pool of the orchestrator that started this worker for its next trial's run URI.

    Only a worker started by an orchestrator (GYMFLOW_PARENT_PID) joins a pool. Once handed a
    run, its output goes to that run's worker-train.out, as if it had been started for it.
    """
    from gymflow.runtime.algorithms import THREADS_ENV

    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit() or seconds <= 0:
        return None
    run_uri = pool.offer(pool.pool_dir(int(parent), os.environ.get(THREADS_ENV)), seconds)
    if not run_uri:
        return None  # nothing came, or the orchestrator released this worker
    folder = open_run(run_uri).workdir  # the run dir's local folder, where the backend looks for it
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "worker-train.out").open("ab") as out:
        for fd in (1, 2):
            os.dup2(out.fileno(), fd)
    logger.info("handed the next trial: %s", run_uri)
    return run_uri


def serve(run: str | None, wait: float, standby: float, reuse: float, train: Callable[[RunStore], None],
          evaluate: Callable[[str], None], warm_up: Callable[[], object]) -> None:
    """Train (and, when kept on standby, evaluate) runs until no next trial comes. `train` raises to end the
    worker (a failed or interrupted training); `warm_up` loads what training needs while the worker waits."""
    while run is not None:
        store = open_run(run)
        if wait > 0 and not wait_to_be_claimed(store, WAITING_FILE, wait, warm_up=warm_up):
            return  # never needed: the orchestrator started another worker or gave up
        train(store)
        if not (standby > 0 and wait_to_be_claimed(store, STANDBY_FILE, standby)):
            return
        evaluate(run)
        run = next_trial(reuse) if wait > 0 else None  # a pooled worker is claimed like a prestarted one
