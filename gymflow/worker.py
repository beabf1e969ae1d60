"""Entry points of the worker program, `gymflow worker train|evaluate RUN_URI`.

The worker needs only its run directory; it logs to worker.log there, keeps
status.json current, and exits non-zero with the error in status.json on failure.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from gymflow.procs import pid_alive
from gymflow.results import LOG_FILE, EvalReport
from gymflow.runtime.status import StatusFile
from gymflow.storage import RunStore

if TYPE_CHECKING:  # the trainer imports torch and SB3: only a worker process loads them, not an orchestrator
    from gymflow.runtime.trainer import ProgressHook

logger = logging.getLogger(__name__)
_watching = False

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PARENT_ENV = "GYMFLOW_PARENT_PID"


def watch_parent(interval_s: float = 2.0) -> None:
    """When started by an orchestrator (GYMFLOW_PARENT_PID), stop cleanly if it disappears.

    The worker then gets SIGTERM from itself: it checkpoints and exits, so a lost
    orchestrator never leaves a training process behind.
    """
    global _watching
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit() or _watching:
        return
    _watching = True

    def watch() -> None:
        while pid_alive(int(parent)):
            time.sleep(interval_s)
        logger.warning("the orchestrator (pid %s) is gone; checkpointing and stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gymflow-parent-watch", daemon=True).start()


@contextmanager
def worker_log(store: RunStore) -> Iterator[None]:
    """Append the worker's log records to RUN_URI/worker.log while the block runs; at its end, seal every growing
    file of the run dir (what the heartbeat has not published yet becomes visible)."""
    path = store.open_log(LOG_FILE)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # the libraries' warnings (SB3's, gymnasium's, torch's) belong in worker.log too
    try:
        yield
    except BaseException:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()
        try:
            store.seal()
        except Exception:  # noqa: BLE001 - the phase's own error is the one to report
            logger.warning("could not publish the rest of the run dir's logs and metrics", exc_info=True)
        raise
    logging.captureWarnings(False)
    root.removeHandler(handler)
    handler.close()
    store.seal()


def train(store: RunStore, on_progress: ProgressHook | None = None) -> str:
    """Train the run to its budget (resuming from the newest checkpoint); the final state."""
    from gymflow.runtime.trainer import Trainer

    watch_parent()
    with worker_log(store):
        try:
            return Trainer(store, on_progress).run()
        except Exception:
            logger.exception("training failed")
            raise


def evaluate(store: RunStore) -> EvalReport:
    """Evaluate the run's final model and write eval.json."""
    from gymflow.runtime.evaluation import evaluate_run
    from gymflow.runtime.trainer import load_spec

    with worker_log(store):
        status = StatusFile(store, on_beat=store.sync)
        spec = load_spec(store)
        status.start(state="running", phase="evaluate")
        try:
            report = evaluate_run(store, spec)
        except Exception as exc:
            logger.exception("evaluation failed")
            status.finish("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        status.finish("completed")
        return report
