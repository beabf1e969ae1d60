"""Outcome events of the trial and sweep flows, emitted from flow state hooks.

`gymflow.trial.completed|failed` and `gymflow.sweep.completed|failed` carry what a person
wants in an alert (experiment, trial, outcome, mean reward, error); the automations in
deployments/automations.yaml turn them into notifications, and users can build their own
(e.g. "mean reward below 400 on the nightly run"). Crashes, where no hook can run, are
caught by Prefect's own `prefect.flow-run.Crashed` event.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gymflow.spec import Spec

logger = logging.getLogger(__name__)


def _identity(parameters: dict[str, Any]) -> tuple[str, str]:
    """(experiment, trial id) from a flow run's parameters, even when they do not resolve."""
    spec = parameters.get("spec")
    if isinstance(spec, Spec):
        return spec.name, spec.trial_id or ""
    if isinstance(spec, dict):
        return str(spec.get("name", "")), str(spec.get("trial_id") or "")
    spec_file = parameters.get("spec_file")
    if not spec_file:
        return "", ""
    try:
        from gymflow import config

        resolved = config.resolve_input(None, str(spec_file), parameters.get("overrides") or (), deep=False)
        return resolved.name, resolved.trial_id or ""
    except Exception:  # noqa: BLE001 - an unresolvable spec is named by its file
        return Path(str(spec_file)).stem, ""


def _result(state: Any) -> Any:
    try:
        return state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - a result that cannot be read leaves the fields empty
        return None


def _error(state: Any, result: Any) -> str | None:
    if state.message:
        return state.message
    return f"{type(result).__name__}: {result}" if isinstance(result, BaseException) else None


def _emit(kind: str, key: str, flow_run: Any, state: Any, result: Any, payload: dict[str, Any]) -> None:
    """Emit gymflow.KIND.completed|failed for the final state, the error filled in on failure."""
    from prefect.events import emit_event

    outcome = "completed" if state.is_completed() else "failed"
    if outcome == "failed":
        payload["error"] = _error(state, result)

    related = [{"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.role": "flow-run",
                "prefect.resource.name": flow_run.name}]
    if flow_run.deployment_id:
        related.append({"prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}",
                        "prefect.resource.role": "deployment"})
    resource = {"prefect.resource.id": f"gymflow.{kind}.{key}", "prefect.resource.name": payload.get("experiment") or key,
                "gymflow.experiment": str(payload.get("experiment") or "")}
    emit_event(f"gymflow.{kind}.{outcome}", resource=resource, related=related,
               payload={"kind": kind, "outcome": outcome, "flow_run": flow_run.name, **payload})


def trial_finished(flow: Any, flow_run: Any, state: Any) -> None:
    """on_completion/on_failure hook of the trial flow. Never raises: an alert must not fail a trial."""
    try:
        from gymflow.results import TrialOutcome

        result = _result(state)
        experiment, trial_id = _identity(flow_run.parameters)
        payload: dict[str, Any] = {"experiment": experiment, "trial_id": trial_id, "mean_reward": None,
                                   "std_reward": None, "timesteps": None, "run_uri": None, "error": None}
        if isinstance(result, TrialOutcome):
            payload.update(experiment=result.experiment, trial_id=result.trial_id, mean_reward=result.mean_reward,
                           std_reward=result.std_reward, timesteps=result.timesteps, run_uri=result.run_uri)
        _emit("trial", payload["trial_id"] or str(flow_run.id), flow_run, state, result, payload)
    except Exception:  # noqa: BLE001
        logger.warning("could not emit the trial's outcome event", exc_info=True)


def sweep_finished(flow: Any, flow_run: Any, state: Any) -> None:
    """on_completion/on_failure hook of the sweep flow. Never raises."""
    try:
        result = _result(state)
        experiment, _ = _identity(flow_run.parameters)
        payload: dict[str, Any] = {"experiment": experiment, "trials": None, "failed": None, "skipped": None,
                                   "best_config": None, "mean_reward": None, "error": None}
        rows = getattr(result, "rows", None)
        if rows is not None:
            configs = result.configs
            payload.update(experiment=result.name, trials=len(rows), failed=result.failed, skipped=result.skipped,
                           best_config=result.best, mean_reward=configs[0].mean_reward if configs else None)
        _emit("sweep", payload["experiment"] or str(flow_run.id), flow_run, state, result, payload)
    except Exception:  # noqa: BLE001
        logger.warning("could not emit the sweep's outcome event", exc_info=True)
