"""Before anything is provisioned: the trial's run dir is this trial's, and this run owns it.

``claim`` refuses a run dir that holds another trial or has a live owner (a RunDirBusy, exit 2),
takes the lease, and, when the previous owner died without letting go, reconciles what it left:
its Prefect flow run is marked Crashed, its MLflow run FAILED (the resumed trial reopens it), and
whatever it provisioned is torn down.
"""

from __future__ import annotations

import logging
from typing import Any

from backends.base import Backend, Handle
from gymflow.ownership import Lease, Owner, RunDirBusy, spec_conflict
from gymflow.spec import Spec
from gymflow.storage import RunStore, prepare
from gymflow.tracking import fail_if_running
from tasks.context import prefect_logger

logger = logging.getLogger(__name__)


def claim(backend: Backend, handle: Handle, spec: Spec, flow_run_id: str | None) -> Lease:
    """The run dir's lease for this run, renewed until released; RunDirBusy when the run dir is not to be had."""
    prepare(spec.storage, spec.create_bucket)
    store = backend.store(handle)
    conflict = spec_conflict(store, spec.model_dump(mode="json"))
    if conflict:
        raise RunDirBusy(conflict)
    lease = Lease.acquire(store, spec.trial_id or "", flow_run_id)
    try:
        if lease.previous is not None:
            reconcile(lease.previous, store, backend, spec, flow_run_id)
    except BaseException:
        lease.release()
        raise
    return lease.renewing()


def reconcile(previous: Owner, store: RunStore, backend: Backend, spec: Spec, flow_run_id: str | None) -> None:
    """Make the records of a run that died say so, and release what it left; each step on its own (one that
    fails is logged, the rest still run)."""
    log = prefect_logger()
    log.warning("the previous run of this trial died: %s; marking its records and resuming", previous.describe())
    why = f"its orchestrator ({previous.host}, pid {previous.pid}) died; trial taken over by a new run"
    if previous.flow_run_id and previous.flow_run_id != flow_run_id:
        _step(lambda: mark_flow_run_crashed(previous.flow_run_id or "", why), "mark its Prefect flow run Crashed")
    _step(lambda: _log_failed(fail_if_running(store)), "mark its MLflow run FAILED")
    _step(lambda: backend.teardown(backend.plan(spec)), "tear down what it provisioned")


def _step(fn: Any, what: str) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - reconciling is best effort; the trial itself must go on
        logger.warning("could not %s", what, exc_info=True)


def mark_flow_run_crashed(flow_run_id: str, message: str) -> bool:
    """Set a flow run that is not final yet to Crashed; True when it was changed."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        if state is not None and state.is_final():
            return False
        client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    prefect_logger().info("marked the flow run %s Crashed", flow_run_id)
    return True


def _log_failed(run_id: str | None) -> None:
    if run_id:
        prefect_logger().info("marked the MLflow run %s FAILED", run_id)
