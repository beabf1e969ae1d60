"""The composition root's side of `gymflow run`: backend check, Prefect API, the trial flow, the summary.

Imported only by the CLI's orchestration commands, so `gymflow worker` never loads Prefect.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from rich.console import Console

from gymflow.spec import Spec

logger = logging.getLogger(__name__)
REFUSED = "Refused"  # flows.trial.REFUSED (not imported: this module loads before Prefect)


def ui_url(api_url: str | None, flow_run_id: str | None) -> str | None:
    if not api_url or not flow_run_id:
        return None
    return f"{api_url.removesuffix('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}"


def run_trial(spec: Spec, console: Console) -> Any:
    """Run the trial flow against the configured, background or ephemeral Prefect API."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gymflow.cli import server

    api_url = server.ensure_api()
    console.print(f"trial [bold]{spec.trial_id}[/bold] → {spec.storage}", highlight=False)
    settings = {PREFECT_API_URL: api_url} if api_url else {}
    with temporary_settings(updates=settings), _interruptible():
        from flows.outages import patient_events
        from flows.returned import result_of
        from flows.trial import trial

        patient_events()
        state = trial(spec, return_state=True)
        result = result_of(state)
        flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    url = ui_url(api_url, flow_run_id)
    if url:
        console.print(f"Prefect UI: {url}", highlight=False)
    _summary(state, result, console)
    if state.is_failed() and state.name != REFUSED:
        from flows.trial import resume_hint

        hint = resume_hint(spec)
        if hint:
            console.print(hint, highlight=False)
    import resource

    console.print(f"orchestrator peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", style="dim")
    return state


@contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C asks the trial to stop at its next safe point (within a poll interval: the worker checkpoints, teardown
    runs, the flow run ends Cancelled); a second Ctrl-C interrupts at once."""
    import signal
    import threading

    from tasks.context import interrupt_requested, request_interrupt

    def on_interrupt(signum: int, frame: Any) -> None:
        if interrupt_requested():
            raise KeyboardInterrupt
        request_interrupt()

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _summary(state: Any, result: Any, console: Console) -> None:
    from gymflow.results import TrialOutcome

    if isinstance(result, TrialOutcome):
        console.print(f"MLflow: {result.mlflow_location}", highlight=False)
        console.print(f"run dir: {result.run_uri}", highlight=False)
        evaluated = f" of {result.evaluated}" if result.evaluated else ""
        console.print(f"[bold green]completed[/bold green]: mean evaluation reward {result.mean_reward:.2f} ± "
                      f"{result.std_reward:.2f}{evaluated}; trained {result.timesteps} timesteps ({result.duration_s:.0f} s)")
    elif state.is_cancelled():
        console.print(f"[bold yellow]cancelled[/bold yellow]: {state.message}")
    elif state.name == REFUSED:
        console.print(f"[bold red]refused[/bold red]: {state.message}")
    else:
        console.print(f"[bold red]failed[/bold red]: {result if isinstance(result, BaseException) else state.message}")


def exit_code(state: Any) -> int:
    """0 completed, 2 refused before anything started (bad input, a run dir in use), 130 cancelled, 1 failed."""
    if state.is_completed():
        return 0
    if state.name == REFUSED:
        return 2
    return 130 if state.is_cancelled() else 1


def sweep_scope(base: Spec, trials: list[Spec]) -> AbstractContextManager[None]:
    """`gymflow sweep` on a local cluster: the backend's sweep scope opens now, so that what it starts ahead (the
    local backend's first workers: torch, SB3) overlaps this process loading Prefect, MLflow and Dask; the sweep
    flow, in this process, uses them. A no-op scope when the trials run elsewhere."""
    import backends
    from gymflow import sweep as sweeps

    todo = [t for t in trials if sweeps.finished_report(t) is None]
    if base.sweep is None or not todo or sweeps.dask_address(base.sweep):
        return nullcontext()
    workers = sweeps.slots(len(todo), base.sweep.max_parallel)
    return backends.create(sweeps.for_local_slots(todo[:1], workers, remote=False)[0]).sweep_scope(min(workers, len(todo)))


def run_sweep(source: str | dict[str, Any], globals_files: list[str], overrides: list[str], console: Console) -> Any:
    """Run the sweep flow (it expands the spec itself, as a deployment's run does) against a real Prefect server,
    never the per-process temporary one: Dask workers must all report to one server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gymflow.cli import server

    api_url = server.ensure_api() or server.start().api_url
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        from flows.outages import patient_events
        from flows.returned import result_of
        from flows.sweep import sweep

        patient_events()
        params: dict[str, Any] = {"spec_file": source} if isinstance(source, str) else {"spec": source}
        state = sweep(**params, overrides=overrides, globals_files=globals_files, return_state=True)
        result = result_of(state)
        flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    url = ui_url(api_url, flow_run_id)
    if url:
        console.print(f"Prefect UI: {url}", highlight=False)
    return state, result


def print_sweep(result: Any, console: Console) -> None:
    """The comparison table, the best configuration and what failed."""
    from rich.table import Table

    table = Table("trial", "configuration", "seed", "mean reward", "timesteps", "status")
    for row in result.rows:
        reward = f"{row.mean_reward:.2f} ± {row.std_reward:.2f}" if row.mean_reward is not None else "–"
        table.add_row(row.trial_id, row.config_key, str(row.seed), reward, str(row.timesteps), row.outcome)
    console.print(table)
    for c in result.configs:
        console.print(f"  {c.config}: {c.mean_reward:.2f} ± {c.std_over_seeds:.2f} over {c.seeds} seed(s)", highlight=False)
    if result.best:
        console.print(f"[bold green]best configuration[/bold green]: {result.best}", highlight=False)
    if result.skipped:
        console.print(f"{result.skipped} trial(s) had finished earlier and were not run again")
    for row in result.rows:
        if row.outcome != "completed":
            console.print(f"[bold red]{row.outcome}[/bold red] {row.trial_id}: {row.error}", highlight=False)
    console.print(f"comparison plot: {result.plot} (also in MLflow run {result.mlflow_parent_run_id})", highlight=False)
