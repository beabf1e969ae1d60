"""What Prefect, MLflow and the run dir record of a trial: the checks shared by the crash and fault tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect_stack import Stack


def flow_runs(stack: Stack, run: Path | str) -> list[Any]:
    """The trial flow runs on this run dir, oldest first (tests share a server and their trials share ids)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
    mine = [r for r in runs if (r.parameters.get("spec") or {}).get("storage") == str(run)]
    return sorted(mine, key=lambda r: r.created)


def task_runs(stack: Stack, flow_run_id: Any) -> dict[str, list[str]]:
    """Each task's run states, by task name, for one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    found: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.created):
        found.setdefault(run.name, []).append(run.state.type.value)
    return found


def mlflow_runs(uri: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def trained(run: Path) -> int:
    try:
        return int(json.loads((run / "status.json").read_text()).get("timesteps", 0))
    except (OSError, ValueError):
        return 0
