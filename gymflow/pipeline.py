"""The composition root's side of `gymflow run`: backend check, Prefect API, the trial flow, the summary.

Imported only by the CLI's orchestration commands, so `gymflow worker` never loads Prefect.
"""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console

from gymflow.spec import Spec

logger = logging.getLogger(__name__)


def check_backend(spec: Spec) -> None:
    """Resolve and check the spec's backend; SpecError (exit 2) before anything is provisioned."""
    import backends

    backends.create(spec)


def ui_url(api_url: str | None, flow_run_id: str | None) -> str | None:
    if not api_url or not flow_run_id:
        return None
    return f"{api_url.removesuffix('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}"


def run_trial(spec: Spec, console: Console) -> Any:
    """Run the trial flow against the configured, background or ephemeral Prefect API."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gymflow import server

    api_url = server.ensure_api()
    console.print(f"trial [bold]{spec.trial_id}[/bold] → {spec.storage}", highlight=False)
    settings = {PREFECT_API_URL: api_url} if api_url else {}
    with temporary_settings(updates=settings):
        from flows.trial import trial

        state = trial(spec, return_state=True)
        result = state.result(raise_on_failure=False)
        flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    url = ui_url(api_url, flow_run_id)
    if url:
        console.print(f"Prefect UI: {url}", highlight=False)
    _summary(state, result, console)
    import resource

    console.print(f"orchestrator peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", style="dim")
    return state


def _summary(state: Any, result: Any, console: Console) -> None:
    from tasks.context import TrialResult

    if isinstance(result, TrialResult):
        console.print(f"MLflow: {result.mlflow_location}", highlight=False)
        console.print(f"run dir: {result.run_uri}", highlight=False)
        console.print(f"[bold green]completed[/bold green]: mean evaluation reward {result.mean_reward:.2f} ± "
                      f"{result.std_reward:.2f} after {result.timesteps} timesteps ({result.duration_s:.0f} s)")
    elif state.is_cancelled():
        console.print(f"[bold yellow]cancelled[/bold yellow]: {state.message}")
    else:
        console.print(f"[bold red]failed[/bold red]: {result if isinstance(result, BaseException) else state.message}")


def exit_code(state: Any) -> int:
    if state.is_completed():
        return 0
    return 130 if state.is_cancelled() else 1
