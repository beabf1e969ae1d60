"""The trial flow: provision, setup, train, evaluate, store — and teardown, always."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.states import Cancelled, Failed

import backends
from flows import events, returned
from flows.outages import patient_events
from gymflow import config, preflight
from gymflow.errors import UserError
from gymflow.results import TrialOutcome
from gymflow.spec import Spec
from tasks import phases
from tasks.claim import claim
from tasks.context import TrialCancelled, check_interrupt, current_flow_run_id, prefect_logger
from tasks.report import trial_markdown

logger = logging.getLogger(__name__)
REFUSED = phases.REFUSED  # the name of a Failed state for input refused before anything ran (the CLI exits 2)


def run_name(spec: Spec) -> str:
    """<experiment>-<algo>-<env>-seed<seed>-<short id> (Spec.run_name)."""
    return spec.run_name


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    try:
        spec = config.resolve_parameters(params)
    except Exception:  # noqa: BLE001 - the flow itself reports a bad spec
        spec_file = params.get("spec_file")
        return f"trial-{Path(str(spec_file)).stem}" if spec_file else "trial"
    return run_name(spec)


@flow(name="trial", flow_run_name=_flow_run_name, validate_parameters=True,
      on_completion=[events.trial_finished], on_failure=[events.trial_finished])
def trial(spec: Spec | None = None, spec_file: str | None = None, overrides: list[str] | None = None,
          globals_files: list[str] | None = None, parent_run_id: str | None = None) -> Any:
    """One trial through provision, setup, train, evaluate, store and teardown (teardown runs on failure and cancellation).

    Args:
        spec: The experiment spec, filled in as a form. Leave empty to use `spec_file`.
        spec_file: Path (relative to the deployment's working directory) or URI of a spec YAML file.
        overrides: Changes on top of the spec, each `dotted.path=value`, as `gymflow run --set`.
        globals_files: Globals YAML files for `${name}` substitution, as `gymflow run --globals`.
        parent_run_id: MLflow run to nest this trial under (set by the sweep flow).
    """
    log = prefect_logger()
    patient_events()  # a deployment's run: from here on, the event stream reconnects through a server restart
    try:  # a bad spec or backend config fails here, before anything is provisioned, and is never retried
        spec = _checked(spec, spec_file, overrides or (), globals_files or ())
        backend = backends.create(spec)
        handle = backend.plan(spec)
        lease = claim(backend, handle, spec, current_flow_run_id())  # one owner per run dir; a dead one's records fixed
    except UserError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), name=REFUSED)  # a user error, not a crash: no traceback, nothing started
    ctx = None
    started = time.time()
    cancelled: str | None = None
    refused: str | None = None
    try:
        handle = phases.provisioned(phases.provision(backend, spec, return_state=True))
        check_interrupt()
        ctx = phases.setup(backend, handle, spec, run_name(spec), parent_run_id)
        timesteps = phases.train(backend, handle, spec, ctx)
        check_interrupt()
        report = phases.evaluate(backend, handle, spec, ctx)
        check_interrupt()
        result = phases.store(backend, handle, spec, ctx, report, timesteps)
    except (TrialCancelled, KeyboardInterrupt) as exc:  # a cancel from the UI, or Ctrl-C: the user's own stop
        cancelled = str(exc) if isinstance(exc, TrialCancelled) else f"trial {spec.trial_id} interrupted (Ctrl-C)"
        _record_failure(spec, ctx, handle.run_uri, started, "cancelled", cancelled)
        log.warning("%s", cancelled)
        result = None
    except UserError as exc:  # a setting the cloud refused: bad input, nothing was created, nothing to resume
        refused = str(exc)
        _record_failure(spec, ctx, handle.run_uri, started, "failed", refused)
        log.error("%s", exc)
        result = None
    except BaseException as exc:
        _record_failure(spec, ctx, handle.run_uri, started, "failed", f"{type(exc).__name__}: {exc}")
        steps = _checkpoint_steps(backend, handle)
        if steps:
            log.warning("%s", _resume_hint(spec, steps))
        raise
    finally:
        _teardown(backend, handle)
        lease.release()
    if refused is not None:
        return Failed(message=refused, name=REFUSED)
    if cancelled is not None:
        return Cancelled(message=f"{cancelled}; the worker stopped and teardown is done. {_resume_hint(spec, _checkpoint_steps(backend, handle))}")
    log.info("trial %s: mean reward %.2f ± %.2f", spec.trial_id, result.mean_reward or 0.0, result.std_reward or 0.0)
    return returned.keep(result)


def _checked(spec: Spec | None, spec_file: str | None, overrides: Sequence[str], globals_files: Sequence[str]) -> Spec:
    """The flow's inputs as one checked trial. A resolved spec with nothing on top (from `gymflow run` or the sweep
    flow, which checked it) is used as it is; anything else gets every check `gymflow validate` makes."""
    if isinstance(spec, Spec) and spec.trial_id and not overrides and not globals_files:
        return spec
    source = config.input_source(spec, spec_file, keep_trial_id=not (overrides or globals_files))
    return preflight.check(source, globals_files, overrides, backend_check=backends.problems).base


def _resume_hint(spec: Spec, steps: list[int]) -> str:
    """How to go on: a rerun resumes from the newest checkpoint (named where the run dir's steps say which)."""
    where = f"its checkpoint at {steps[-1]} timesteps" if steps else "its newest checkpoint"
    return f"Run the same spec again to resume from {where} (budget {spec.budget.timesteps or spec.budget.episodes})."


def _checkpoint_steps(backend: Any, handle: Any) -> list[int]:
    from gymflow.runtime import checkpoints

    try:
        return list(checkpoints.steps(backend.store(handle)))
    except Exception:  # noqa: BLE001 - the hint is a courtesy
        return []


def resume_hint(spec: Spec) -> str | None:
    """After a failed trial: how a rerun goes on, when the run dir holds a checkpoint to resume from."""
    try:
        backend = backends.create(spec)
        handle = backend.plan(spec)
    except Exception:  # noqa: BLE001 - the hint is a courtesy
        return None
    steps = _checkpoint_steps(backend, handle)
    return _resume_hint(spec, steps) if steps else None


def _teardown(backend: Any, handle: Any) -> None:
    """Teardown as a task; if the task itself cannot run (e.g. while the process is being terminated),
    tear down directly: releasing resources matters more than recording it."""
    try:
        phases.teardown(backend, handle)
    except BaseException:
        logger.warning("the teardown task did not complete; tearing down directly", exc_info=True)
        backend.teardown(handle)


def _record_failure(spec: Spec, ctx: Any, run_uri: str, started: float, outcome: str, error: str) -> None:
    """Mark the MLflow run and leave a summary artifact; never masks the original error."""
    try:
        from prefect.artifacts import create_markdown_artifact

        from gymflow.tracking import Tracker

        if ctx is not None:
            Tracker(ctx.tracking_uri).finish(ctx.mlflow_run_id, "KILLED" if outcome == "cancelled" else "FAILED")
        result = TrialOutcome(trial_id=spec.trial_id or "", experiment=spec.experiment, outcome=outcome,
                             duration_s=round(time.time() - started, 1), mlflow_run_id=ctx.mlflow_run_id if ctx else None,
                             run_uri=run_uri, error=error)
        create_markdown_artifact(trial_markdown(spec, result), description=f"trial {spec.trial_id}")
    except Exception:  # noqa: BLE001
        logger.warning("could not record the %s trial", outcome, exc_info=True)
