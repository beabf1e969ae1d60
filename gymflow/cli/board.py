"""What `gymflow sweep` shows while its trials run: one row per trial, read from the trials' run directories.

On a terminal, a live table (Rich) redrawn every second or so: a summary line (done, running,
waiting, failed; the best so far) and the rows that matter now (running first, then the latest
finished), as many as fit. Elsewhere (a CI log, a pipe), one line per trial as it starts and ends.
The Prefect log lines of the trials are kept in Prefect (the UI, `prefect flow-run logs`), not
streamed here; `gymflow sweep --verbose` streams them as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from gymflow.spec import Spec

logger = logging.getLogger(__name__)

_FINAL = ("completed", "failed", "stopped", "earlier")
_STYLE = {"completed": "green", "earlier": "green", "failed": "red", "stopped": "yellow", "training": "cyan",
          "evaluating": "cyan", "starting": "cyan", "waiting": "dim"}


@dataclass
class Row:
    trial: Spec
    config: str
    state: str = "waiting"
    timesteps: int = 0
    reward: float | None = None
    error: str = ""
    order: int = 0  # when it reached its state (rows that changed last are shown first among equals)


class Board:
    """The trials' rows, refreshed from their run dirs."""

    def __init__(self, trials: list[Spec], varied: list[str]) -> None:
        from gymflow.sweep import finished_report, varied_values

        self.rows: list[Row] = []
        for trial in trials:
            values = varied_values(trial, varied)
            config = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items()) or "base"
            row = Row(trial, f"{config}, seed {trial.seed}")
            report = finished_report(trial)
            if report is not None:
                row.state, row.timesteps, row.reward = "earlier", report.trained_timesteps or report.timesteps, report.mean_reward
            self.rows.append(row)
        self._tick = 0

    def refresh(self) -> list[Row]:
        """Read the run dir of every trial not final yet; the rows whose state changed."""
        changed = []
        for row in self.rows:
            if row.state in _FINAL:
                continue
            before = row.state
            try:
                _read(row)
            except Exception:  # noqa: BLE001 - an unreadable run dir is read again at the next refresh
                logger.debug("could not read %s", row.trial.storage, exc_info=True)
            if row.state != before:
                self._tick += 1
                row.order = self._tick
                changed.append(row)
        return changed

    def best(self) -> Row | None:
        done = [r for r in self.rows if r.reward is not None and r.state in ("completed", "earlier")]
        return max(done, key=lambda r: r.reward or 0.0) if done else None

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for row in self.rows:
            key = {"earlier": "completed", "evaluating": "running", "training": "running", "starting": "running"}.get(
                row.state, row.state)
            counts[key] = counts.get(key, 0) + 1
        parts = [f"{counts.get(k, 0)} {k}" for k in ("completed", "running", "waiting", "failed", "stopped") if counts.get(k)]
        best = self.best()
        text = f"{sum(counts.get(k, 0) for k in ('completed', 'failed', 'stopped'))}/{len(self.rows)} done: " + ", ".join(parts)
        return text + (f"; best so far {best.reward:.2f} ({best.config})" if best and best.reward is not None else "")

    def render(self, height: int) -> Group:
        """The summary and as many rows as fit in height: running ones, then the latest to finish, then failures."""
        rank = {"training": 0, "evaluating": 0, "starting": 0, "failed": 1, "stopped": 1, "completed": 2, "earlier": 3,
                "waiting": 4}
        shown = sorted(self.rows, key=lambda r: (rank.get(r.state, 5), -r.order))[: max(1, height - 6)]
        table = Table("trial", "configuration", "state", "timesteps", "reward", box=None, pad_edge=False)
        for row in shown:
            reward = f"{row.reward:.2f}" if row.reward is not None else "–"
            budget = row.trial.budget.timesteps
            steps = f"{row.timesteps}/{budget}" if budget else str(row.timesteps)
            table.add_row(row.trial.trial_id or "", row.config, Text(_label(row), style=_STYLE.get(row.state, "")),
                          steps, reward)
        hidden = len(self.rows) - len(shown)
        more = [Text(f"… and {hidden} more", style="dim")] if hidden > 0 else []
        return Group(Text(self.summary(), style="bold"), table, *more)


def _label(row: Row) -> str:
    if row.state == "earlier":
        return "finished earlier"
    return f"failed: {row.error}"[:80] if row.state == "failed" and row.error else row.state


def _read(row: Row) -> None:
    """A row's state from its run dir: the lease says whether a run owns it, status.json what the worker does,
    eval.json the result."""
    from gymflow.ownership import read_owner
    from gymflow.results import EVAL_FILE, STATUS_FILE, EvalReport, Status
    from gymflow.storage import open_run

    store = open_run(row.trial.storage)
    owner, _ = read_owner(store)
    if owner is None or owner.trial_id != row.trial.trial_id:
        return
    try:
        status = Status.model_validate(store.read_json(STATUS_FILE))
    except FileNotFoundError:
        status = None
    if status is not None:
        row.timesteps = status.timesteps if status.phase == "train" else row.timesteps or status.timesteps
    if owner.released_at is None:
        row.state = {"train": "training", "evaluate": "evaluating"}.get(status.phase if status else "", "starting")
        return
    if status is not None and status.state == "completed" and status.phase == "evaluate" and store.exists(EVAL_FILE):
        report = EvalReport.model_validate(store.read_json(EVAL_FILE))
        row.state, row.reward = "completed", report.mean_reward
        row.timesteps = report.trained_timesteps or row.timesteps
    elif status is not None and status.state == "failed":
        row.state, row.error = "failed", status.error or ""
    else:
        row.state = "stopped"


@contextmanager
def shown(board: Board, console: Console, interval_s: float = 1.0) -> Iterator[None]:
    """Keep the board on the console while the block runs: live on a terminal, else a line per change."""
    stop = threading.Event()
    live: Any = None
    if console.is_terminal:
        from rich.live import Live

        live = Live(board.render(console.height), console=console, refresh_per_second=2, transient=True)
        live.start()

    def loop() -> None:
        while not stop.wait(interval_s):
            changed = board.refresh()
            if live is not None:
                live.update(board.render(console.height))
            else:
                for row in changed:
                    console.print(_line(board, row), highlight=False)

    thread = threading.Thread(target=loop, name="gymflow-board", daemon=True)
    thread.start()
    try:
        with _quiet_trial_logs():
            yield
    finally:
        stop.set()
        thread.join(timeout=10)
        if live is not None:
            live.stop()


def _line(board: Board, row: Row) -> str:
    what = _label(row) if row.state != "completed" else f"completed: reward {row.reward:.2f} after {row.timesteps} timesteps"
    return f"{row.trial.trial_id} ({row.config}) {what} — {board.summary()}"


@contextmanager
def _quiet_trial_logs() -> Iterator[None]:
    """The flow and task runs' log records stay out of the console (they still go to the Prefect API)."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # Prefect adds its console handler once, on its first import: now, so it can be quieted

    def keep(record: logging.LogRecord) -> bool:
        return not record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))

    handlers = [h for h in logging.getLogger().handlers + logging.getLogger("prefect").handlers
                if isinstance(h, PrefectConsoleHandler)]
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)
