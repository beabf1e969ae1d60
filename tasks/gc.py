"""Orphans: records and resources of trials whose orchestrator died, found and ended.

A trial flow run that Prefect still shows Running, or an MLflow run still RUNNING, is an orphan
when its run dir's lease (owner.json) says nobody runs the trial any more (the owner died or its
lease expired) or another flow run owns it now. ``collect`` finds them; unless it is a dry run it
marks such flow runs Crashed and such MLflow runs FAILED, and tears down what the trial's backend
left (``Backend.teardown`` on the trial's planned handle: idempotent, by name and label).
A trial whose owner is alive is never touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import backends
from gymflow import config
from gymflow.errors import GymflowError, clip
from gymflow.ownership import read_owner, ttl
from gymflow.spec import Spec
from gymflow.storage import open_run
from gymflow.tracking import Tracker, fail_if_running, read_record

logger = logging.getLogger(__name__)


@dataclass
class Orphan:
    """One thing found, what was wrong and what was (or would be) done."""

    kind: str  # "flow run", "MLflow run"
    id: str
    trial_id: str
    run_uri: str
    age_s: float
    reason: str
    action: str


def collect(*, dry_run: bool, older_than_s: float = 0.0, backend: str | None = None,
            tracking_uri: str | None = None, prefect: bool = True, machines_of: Any | None = None) -> list[Orphan]:
    """Every orphan of the Prefect API in use and of the MLflow store; with `machines_of` (a configured backend),
    also the VMs or jobs it created that no live trial owns. Fixed unless dry_run."""
    found: list[Orphan] = []
    handled: set[str] = set()
    if prefect:
        found += _flow_runs(dry_run, older_than_s, backend, handled)
    found += _mlflow_runs(dry_run, older_than_s, backend, tracking_uri, handled)
    if machines_of is not None:
        found += machines(dry_run, older_than_s, machines_of)
    return found


def machines_backend(backend: str | None, spec_file: str | None) -> Any:
    """The configured backend whose VMs or jobs gc looks at: the spec's (its backend settings say where), else
    `backend` with its default settings; None for neither."""
    from gymflow import preflight
    from gymflow.errors import UserError

    if spec_file:
        spec = preflight.check(spec_file, (), (), backend_check=backends.problems).base
        if backend is not None and spec.backend.kind != backend:
            raise UserError(f"--spec {spec_file}: its backend is {spec.backend.kind!r}, not --backend {backend!r}")
        return backends.create(spec)
    if backend is None:
        return None
    cls = backends.resolve(backend)
    return cls(backends.settings_for_kind(cls, backend))


def machines(dry_run: bool, older_than_s: float, backend: Any) -> list[Orphan]:
    """The backend's VMs or jobs whose trial has no live owner: its lease released, dead or expired (or no lease)."""
    found = []
    for machine in backend.machines():
        if machine.age_s < older_than_s:
            continue
        reason = _owner_gone(machine.run_uri, missing="its trial has no lease") if machine.run_uri else \
            "it names no run dir"
        if reason is None:
            continue
        if not dry_run:
            backend.remove(machine)
        found.append(Orphan(machine.kind, machine.id, machine.trial_id, machine.run_uri, machine.age_s, reason,
                            _done([(f"{machine.removal[0]} the {machine.kind}", f"{machine.kind} {machine.removal[1]}")],
                                  dry_run)))
    return found


def _owner_gone(run_uri: str, flow_run_id: str | None = None, missing: str | None = None) -> str | None:
    """Why the trial in run_uri has no live owner (or is owned by another flow run than flow_run_id); None when
    its owner is alive (and is that flow run). Without a lease record: `missing` (None: nothing to judge by)."""
    owner, _ = read_owner(open_run(run_uri))
    if owner is None:
        return missing
    standing = owner.standing(ttl())
    if standing != "live":
        return f"its orchestrator is {standing}: {owner.describe()}"
    if flow_run_id and owner.flow_run_id != flow_run_id:
        return f"the trial was taken over by flow run {owner.flow_run_id}"
    return None


def _spec_of(parameters: dict[str, Any]) -> Spec | None:
    try:
        return config.resolve_parameters(parameters)
    except Exception:  # noqa: BLE001 - a flow run whose spec no longer resolves cannot be judged
        logger.debug("cannot resolve the spec of a flow run", exc_info=True)
        return None


def _flow_runs(dry_run: bool, older_than_s: float, backend: str | None, handled: set[str]) -> list[Orphan]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    from tasks.claim import mark_flow_run_crashed

    found = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["trial"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.RUNNING, StateType.PENDING]))))
    for run in runs:
        started = run.start_time or run.created
        age = time.time() - started.timestamp() if started else 0.0
        spec = _spec_of(run.parameters)
        if spec is None or age < older_than_s or (backend and spec.backend.kind != backend):
            continue
        trial = backends.create(spec)
        handle = trial.plan(spec)
        try:
            reason = _owner_gone(handle.run_uri, str(run.id))
        except GymflowError as exc:  # its store is out of reach from here (credentials): judge the others
            found.append(_unread("flow run", str(run.id), spec.trial_id or "", handle.run_uri, age, exc))
            continue
        if reason is None:
            continue
        nobody = "taken over" not in reason
        actions = [_CRASH] + ([_TEARDOWN, _FAIL] if nobody else [])
        if nobody:
            record = read_record(open_run(handle.run_uri))
            handled.update([record.mlflow_run_id] if record else [])  # its row says so; not listed twice
        if not dry_run:
            mark_flow_run_crashed(str(run.id), f"gymflow gc: {reason}")
            if nobody:
                trial.teardown(handle)
                fail_if_running(open_run(handle.run_uri))
        found.append(Orphan("flow run", str(run.id), spec.trial_id or "", handle.run_uri, age, reason,
                            _done(actions, dry_run)))
    return found


def _mlflow_runs(dry_run: bool, older_than_s: float, backend: str | None, tracking_uri: str | None,
                 handled: set[str]) -> list[Orphan]:
    tracker = Tracker(tracking_uri)
    experiments = [e.experiment_id for e in tracker.client.search_experiments()]
    if not experiments:
        return []
    found = []
    for run in tracker.client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=5000):
        tags = run.data.tags
        run_uri = tags.get("gymflow.run_uri")
        if not run_uri or run.info.run_id in handled or (backend and tags.get("gymflow.backend") != backend):
            continue
        age = time.time() - run.info.start_time / 1000
        if age < older_than_s:
            continue
        try:
            reason = _owner_gone(run_uri)
            record = read_record(open_run(run_uri))
        except GymflowError as exc:
            found.append(_unread("MLflow run", run.info.run_id, tags.get("gymflow.trial_id", ""), run_uri, age, exc))
            continue
        if reason is None and record is not None and record.mlflow_run_id != run.info.run_id:
            reason = f"the trial's run is now {record.mlflow_run_id}"
        if reason is None:
            continue
        if not dry_run:
            tracker.finish(run.info.run_id, "FAILED")
        found.append(Orphan("MLflow run", run.info.run_id, tags.get("gymflow.trial_id", ""), run_uri, age, reason,
                            _done([_FAIL], dry_run)))
    return found


def _unread(kind: str, run_id: str, trial_id: str, run_uri: str, age: float, exc: Exception) -> Orphan:
    """A run whose run dir this process cannot read (no credentials for its store here): left alone, saying why."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    logger.warning("gc: left %s %s alone: its run dir %s could not be read: %s", kind, run_id, run_uri, first)
    return Orphan(kind, run_id, trial_id, run_uri, age, f"its run dir could not be read from here: {clip(first)}",
                  "left alone: run gc where its store's credentials are")


_CRASH = ("mark the flow run Crashed", "flow run marked Crashed")
_TEARDOWN = ("tear down what it provisioned", "torn down")
_FAIL = ("mark the MLflow run FAILED", "MLflow run marked FAILED")


def _done(actions: list[tuple[str, str]], dry_run: bool) -> str:
    if dry_run:
        return "would " + ", ".join(future for future, _ in actions)
    return ", ".join(past for _, past in actions)
