"""The six phases of a trial as Prefect tasks. Thin: call the backend, record what happened."""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from backends.base import Backend, Handle
from gymflow.errors import UserError
from gymflow.results import EvalReport, TrackingRecord, TrialOutcome
from gymflow.runtime.status import library_versions
from gymflow.spec import Spec
from gymflow.tracking import Tracker, git_commit, read_record, write_record
from tasks.context import TrialContext, current_flow_run_id, prefect_logger
from tasks.follow import run_phase
from tasks.retry import RETRY_DELAYS, retry_if_transient
from tasks.report import trial_markdown


REFUSED = "Refused"  # the name of a Failed state for input refused before anything ran (the CLI exits 2)


@task(name="provision", task_run_name="provision", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def provision(backend: Backend, spec: Spec) -> Any:
    """Acquire what the trial runs on (retried on transient errors only). A setting the cloud refuses (a machine
    type, an image, a permission) ends it as a Failed state named Refused: bad input, nothing created, no retry."""
    try:
        return backend.provision(spec)
    except UserError as exc:
        return Failed(message=str(exc), name=REFUSED)


def provisioned(state: Any) -> Handle:
    """The handle from provision's final state; UserError when the cloud refused the trial's settings."""
    if state.is_failed() and state.name == REFUSED:
        raise UserError(state.message or "provision refused the backend settings")
    return state.result()


@task(name="setup", task_run_name="setup", cache_policy=NO_CACHE)
def setup(backend: Backend, handle: Handle, spec: Spec, run_name: str, parent_run_id: str | None = None) -> TrialContext:
    """Write spec.json to the run dir and open the trial's MLflow run."""
    backend.setup(handle, spec)
    tracker = Tracker(spec.tracking.uri)
    flow_run_id = current_flow_run_id()
    tags = {f"version.{k}": v for k, v in library_versions().items()}
    tags["prefect.flow_run_id"] = flow_run_id or ""
    tags["gymflow.run_uri"] = handle.run_uri
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
    store = backend.store(handle)
    record = read_record(store)
    if record is not None and record.tracking_uri == tracker.uri and tracker.reopen(record.mlflow_run_id, tags, parent_run_id):
        run_id = record.mlflow_run_id  # a resumed trial continues its run: one record, one curve
        prefect_logger().info("MLflow (continuing the trial's run): %s", tracker.run_url(run_id, spec.experiment))
    else:
        run_id = tracker.start(spec, run_name, tags, parent_run_id)
        write_record(store, TrackingRecord(tracking_uri=tracker.uri, mlflow_run_id=run_id))
        prefect_logger().info("MLflow: %s", tracker.run_url(run_id, spec.experiment))
    return TrialContext(mlflow_run_id=run_id, tracking_uri=tracker.uri, flow_run_id=flow_run_id)


@task(name="train", task_run_name="train", cache_policy=NO_CACHE)
def train(backend: Backend, handle: Handle, spec: Spec, ctx: TrialContext) -> int:
    """Run the worker's train phase, following it; returns the timesteps trained."""
    status = run_phase(backend, handle, "train", spec, ctx)
    if status.device:  # the device the model really trained on (auto's choice, gymflow/runtime/devices.py)
        Tracker(ctx.tracking_uri).set_tags(ctx.mlflow_run_id, {"gymflow.device": status.device})
    if status.stop_reason:
        prefect_logger().info("training stopped early: %s", status.stop_reason)
    return status.timesteps


@task(name="evaluate", task_run_name="evaluate", cache_policy=NO_CACHE)
def evaluate(backend: Backend, handle: Handle, spec: Spec, ctx: TrialContext) -> EvalReport:
    """Run the worker's evaluate phase and read eval.json."""
    from gymflow.results import EVAL_FILE

    run_phase(backend, handle, "evaluate", spec, ctx)
    report = EvalReport.model_validate(backend.store(handle).read_json(EVAL_FILE))
    prefect_logger().info("evaluation of %s: %.2f ± %.2f over %d episodes", report.which(), report.mean_reward,
                          report.std_reward, report.n_episodes)
    return report


@task(name="store", task_run_name="store", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def store(backend: Backend, handle: Handle, spec: Spec, ctx: TrialContext, report: EvalReport, timesteps: int) -> TrialOutcome:
    """Record the trial: MLflow evaluation metrics, artifacts and status; a Prefect summary artifact."""
    from prefect.artifacts import create_markdown_artifact

    tracker = Tracker(ctx.tracking_uri)
    tracker.log_eval(ctx.mlflow_run_id, report)
    logged = tracker.log_artifacts(ctx.mlflow_run_id, backend.store(handle))
    tracker.finish(ctx.mlflow_run_id, "FINISHED")
    result = TrialOutcome(
        trial_id=spec.trial_id or "", experiment=spec.experiment, outcome="completed", mean_reward=report.mean_reward,
        std_reward=report.std_reward, timesteps=timesteps, evaluated=report.which(), duration_s=round(time.time() - ctx.started_at, 1),
        mlflow_run_id=ctx.mlflow_run_id, mlflow_location=tracker.run_url(ctx.mlflow_run_id, spec.experiment),
        run_uri=handle.run_uri, flow_run_id=ctx.flow_run_id,
    )
    create_markdown_artifact(trial_markdown(spec, result, logged), key=_artifact_key(spec), description=f"trial {spec.trial_id}")
    return result


@task(name="teardown", task_run_name="teardown", cache_policy=NO_CACHE)
def teardown(backend: Backend, handle: Handle) -> None:
    """Release everything provisioned; idempotent, runs whatever happened before."""
    backend.teardown(handle)


def _artifact_key(spec: Spec) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", f"trial-{spec.trial_id}".lower()).strip("-")[:100]
