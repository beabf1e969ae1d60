"""Run a worker phase and follow it: metrics to MLflow and Prefect, log lines to the run log."""

from __future__ import annotations

import logging
import re
import signal
import time
from collections.abc import Callable
from typing import Any

from backends.base import Backend, Handle, Phase, Timing
from gymflow.errors import WorkerError
from gymflow.follow import RunFollower
from gymflow.ownership import lease_held
from gymflow.results import EVAL_METRICS, LOG_FILE, TRAIN_METRICS, Status, TrackingRecord
from gymflow.spec import Spec
from gymflow.storage import RunStore
from gymflow.tracking import Tracker, read_record, write_record
from tasks.context import TrialCancelled, TrialContext, cancel_requested, check_interrupt, prefect_logger

FORWARD_S = 5.0  # how often new metrics, log lines and progress go to MLflow and Prefect
CANCEL_CHECK_S = 3.0


class _Heartbeat:
    """Whether a worker lives, judged only on this machine's clock: the worker's heartbeat must *advance*
    within timing.heartbeat_timeout_s, and its first status of this launch must come within the start-up
    grace. The worker's own timestamps are compared for equality only, never with our clock."""

    def __init__(self, timing: Timing, phase: Phase, before: Status | None) -> None:
        self.timing, self.phase, self.before = timing, phase, before
        self.launched = time.monotonic()
        self.last_beat: tuple[Any, ...] | None = None
        self.last_change = self.launched

    def fresh(self, status: Status | None) -> Status | None:
        """The status only if this launch of this phase wrote it: not what was there before the launch."""
        if status is None or status.phase != self.phase:
            return None
        before = self.before
        if before is not None and before.phase == self.phase and before.started_at == status.started_at:
            return None
        return status

    def check(self, status: Status | None) -> None:
        now = time.monotonic()
        if status is None:
            if now - self.launched > self.timing.startup_grace_s:
                raise WorkerError(f"the {self.phase} worker wrote no status within {self.timing.startup_grace_s:.0f} s of "
                                  "its launch (the backend's start-up grace); it is presumed lost")
            return
        beat = (status.heartbeat_at, status.timesteps, status.episodes, status.state)
        if beat != self.last_beat:
            self.last_beat, self.last_change = beat, now
        elif now - self.last_change > self.timing.heartbeat_timeout_s:
            raise WorkerError(f"the {self.phase} worker's heartbeat has not advanced for {now - self.last_change:.0f} s "
                              f"(limit {self.timing.heartbeat_timeout_s:.0f} s); it is presumed lost")


class _Progress:
    """A Prefect progress artifact over the budget, updated when the percentage moves."""

    def __init__(self, spec: Spec, phase: Phase) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total = spec.budget.timesteps or spec.budget.episodes or 1
        self.by_timesteps = spec.budget.timesteps is not None
        self.last = 0.0
        self.id = create_progress_artifact(0.0, description=f"{phase} progress of trial {spec.trial_id}") if phase == "train" else None

    def update(self, status: Status | None) -> None:
        if self.id is None or status is None:
            return
        from prefect.artifacts import update_progress_artifact

        done = status.timesteps if self.by_timesteps else status.episodes
        pct = min(100.0, round(100.0 * done / self.total, 1))
        if pct - self.last >= 1.0 or (pct == 100.0 and self.last < 100.0):
            update_progress_artifact(self.id, pct)
            self.last = pct


def run_phase(backend: Backend, handle: Handle, phase: Phase, spec: Spec, ctx: TrialContext) -> Status:
    """Launch `gymflow worker PHASE` and follow it to the end; raise when it fails or is lost."""
    log = prefect_logger()
    tracker = Tracker(ctx.tracking_uri)
    store = backend.store(handle)
    forwarded = _Forwarded(store, ctx)
    follower = RunFollower(store, forwarded.offsets)
    follower.skip_existing(LOG_FILE)  # the log of earlier attempts went to their flow runs; their metrics were kept
    progress = _Progress(spec, phase)
    timing = backend.timing()
    heartbeat = _Heartbeat(timing, phase, follower.status())
    backend.launch(handle, phase)
    last_cancel_check = time.monotonic()
    status: Status | None = None
    next_forward = 0.0
    replaced = 0
    try:
        while True:
            state = backend.poll(handle, phase)
            if not state.running:
                status = _forward(follower, tracker, ctx, progress, log) or status
                forwarded.save(follower)
                if not state.lost:
                    break
                replaced += 1
                _replace(backend, handle, phase, state.detail, replaced, tracker, ctx, log)
                heartbeat = _Heartbeat(timing, phase, follower.status())  # the new machine gets its start-up grace
                backend.launch(handle, phase)
                continue
            if time.monotonic() >= next_forward:  # batched: each MLflow write and Prefect update takes CPU from training
                next_forward = time.monotonic() + max(FORWARD_S, timing.poll_s)
                status = _forward(follower, tracker, ctx, progress, log) or status
                forwarded.save(follower)
                try:
                    heartbeat.check(heartbeat.fresh(status))
                except WorkerError as exc:
                    raise WorkerError(f"{exc}; see {backend.output_hint(handle, phase)}") from None
                lease_held(handle.run_uri)
            check_interrupt()
            if time.monotonic() - last_cancel_check >= CANCEL_CHECK_S:
                last_cancel_check = time.monotonic()
                if cancel_requested(ctx.flow_run_id):
                    raise TrialCancelled(f"trial {spec.trial_id} cancelled during {phase}")
            time.sleep(timing.poll_s)
    except BaseException:
        backend.stop(handle, phase)  # never leave a worker running behind a failed or cancelled task
        raise
    return _outcome(heartbeat.fresh(status), state.exit_code, phase, lambda: backend.output_hint(handle, phase),
                    state.detail)


def _replace(backend: Backend, handle: Handle, phase: Phase, why: str, replaced: int, tracker: Tracker,
             ctx: TrialContext, log: Any) -> None:
    """The machine under the worker is gone (a spot VM preempted, a node reclaimed): a new one, which resumes the
    phase from the newest checkpoint, up to the backend's limit; the count goes to MLflow (tag gymflow.preemptions)."""
    limit = backend.max_replacements()
    if replaced > limit:
        raise WorkerError(f"{why} during {phase}, and the trial has had the {limit} replacement(s) it may have "
                          "(backend.max_preemptions); run the same spec again to resume from its newest checkpoint")
    log.warning("%s during %s: replacing it (%d of at most %d); the worker resumes from the newest checkpoint",
                why, phase, replaced, limit)
    try:
        tracker.set_tags(ctx.mlflow_run_id, {"gymflow.preemptions": str(replaced)})
    except Exception:  # noqa: BLE001 - the count is a record, not a reason to fail the trial
        log.warning("could not record the preemption count in MLflow", exc_info=True)
    backend.replace(handle)


class _Forwarded:
    """How far the metrics files have gone to MLflow, kept in the run dir's tracking.json after each forward, so a
    run that takes over from a dead one forwards exactly the rest (MLflow drops an exact repeat of a point, so a
    forward that dies before its record is saved repeats nothing)."""

    FILES = (TRAIN_METRICS, EVAL_METRICS)

    def __init__(self, store: RunStore, ctx: TrialContext) -> None:
        self.store = store
        record = read_record(store)
        if record is None or record.mlflow_run_id != ctx.mlflow_run_id:
            record = TrackingRecord(tracking_uri=ctx.tracking_uri, mlflow_run_id=ctx.mlflow_run_id)
        self.record = record
        self.offsets = {rel: record.forwarded.get(rel, 0) for rel in self.FILES}

    def save(self, follower: RunFollower) -> None:
        offsets = follower.offsets(*self.FILES)
        if offsets != self.record.forwarded:
            self.record = self.record.model_copy(update={"forwarded": offsets})
            write_record(self.store, self.record)


def _forward(follower: RunFollower, tracker: Tracker, ctx: TrialContext, progress: _Progress, log: Any) -> Status | None:
    update = follower.poll()
    if update.train:
        tracker.log_records(ctx.mlflow_run_id, update.train)
    if update.evals:
        tracker.log_records(ctx.mlflow_run_id, update.evals, prefix="eval/")
    for line in update.log_lines:
        _relay(log, line)
    progress.update(update.status)
    return update.status


_WORKER_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")


def _relay(log: Any, line: str) -> None:
    """A worker.log line to the task's log, at its own level; Prefect adds the time, so the worker's is dropped."""
    match = _WORKER_LINE.match(line)
    if match:
        log.log(logging.getLevelName(match[1]), "worker | %s", match[2])
    else:
        log.info("worker | %s", line)


def _outcome(status: Status | None, exit_code: int | None, phase: Phase, hint: Callable[[], str],
             detail: str = "") -> Status:
    """The phase's final status, or the WorkerError that says why there is none (`hint`: where to look, asked for
    only then: on a cloud backend it reads the machine's console; `detail`: what the backend saw end)."""
    if status is None:
        how = f"exited (code {exit_code})" if exit_code is not None else f"ended ({detail or 'no exit code'})"
        raise WorkerError(f"the {phase} worker {how} without writing status.json; see {hint()}")
    if status.state == "failed":
        raise WorkerError(f"the {phase} worker failed: {status.error}")
    if exit_code is not None and exit_code < 0:
        raise WorkerError(f"the {phase} worker was killed by {_signal_name(-exit_code)} (exit code {exit_code}) "
                          f"in state {status.state!r}")
    if exit_code not in (0, None) or status.state != "completed":
        raise WorkerError(f"the {phase} worker ended with exit code {exit_code} in state {status.state!r}")
    return status


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
