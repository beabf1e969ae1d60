"""The sweep flow: every trial through the trial flow, in parallel on Dask, then one comparison."""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Failed
from pydantic import BaseModel

import backends
from flows import api_writes, events, returned
from flows.outages import patient_events
from gymflow import compare, config, preflight
from gymflow.errors import MissingExtraError, UserError
from gymflow.results import TrialOutcome
from gymflow.spec import Spec
from gymflow.storage import common_parent, open_run
from gymflow.sweep import finished_report, for_local_slots, pin_for_workers, slots, varied_paths
from gymflow.sweep import dask_address as resolve_address
from gymflow.tracking import Tracker, absolute_uri
from tasks.context import prefect_logger

logger = logging.getLogger(__name__)

Runner = Literal["dask", "threads"]
# Our own cluster's workers only wait on trial flows, while the trainings they follow need every core: Dask's
# statistical profiler (every 10 ms) and its monitors cost a few % of a core per worker for nothing here. Trials
# wait on the scheduler until a worker is free (saturation 1.0), never behind another trial on a busy worker.
LOCAL_CLUSTER_CONFIG = {
    "distributed.scheduler.worker-saturation": 1.0,
    "distributed.worker.profile.enabled": False,
    "distributed.worker.memory.monitor-interval": "2s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.system-monitor.gil.enabled": False,
}


class SweepResult(BaseModel):
    name: str
    rows: list[TrialOutcome]
    configs: list[compare.ConfigSummary]
    best: str | None = None
    failed: int = 0
    skipped: int = 0
    mlflow_parent_run_id: str | None = None
    plot: str | None = None


@task(name="trial", cache_policy=NO_CACHE, task_run_name="trial-{spec.trial_id}")
def run_trial(spec: Spec, parent_run_id: str | None = None, in_sweep_process: bool = False) -> TrialOutcome:
    """One trial flow on a Dask worker. Never raises: a failed trial is a result, not a stop.

    A trial flow that runs in the sweep's own process lives exactly as long as the sweep flow, whose heartbeats
    already say so; it sends none of its own (Prefect stops a flow's heartbeat thread in 1 s sleeps: ~1 s per trial).
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.trial import trial

    for delay in (*API_RETRY_DELAYS, None):
        try:
            if in_sweep_process and PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is not None:  # the sweep flow set it
                with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                    state = trial(spec, parent_run_id=parent_run_id, return_state=True)
            else:
                state = trial(spec, parent_run_id=parent_run_id, return_state=True)
            result = returned.result_of(state)
        except Exception as exc:  # noqa: BLE001 - the flow run could not even be created
            state, result = None, exc
        if delay is None or not _api_unavailable(result):
            break
        prefect_logger().warning("trial %s: the Prefect API was unavailable (%s); running it again in %d s (it resumes)",
                                 spec.trial_id, result, delay)
        time.sleep(delay)
    if state is None:
        return TrialOutcome(trial_id=spec.trial_id or "", experiment=spec.experiment, outcome="failed",
                            run_uri=spec.storage, error=f"{type(result).__name__}: {result}")
    if isinstance(result, TrialOutcome):
        return result
    outcome = "cancelled" if state.is_cancelled() else "failed"
    error = f"{type(result).__name__}: {result}" if isinstance(result, BaseException) else (state.message or outcome)
    return TrialOutcome(trial_id=spec.trial_id or "", experiment=spec.experiment, outcome=outcome, run_uri=spec.storage, error=error)


API_RETRY_DELAYS = (5, 20)  # a trial whose flow failed on the Prefect API (a 503 from a busy SQLite server) runs again


def _api_unavailable(result: Any) -> bool:
    """Whether a trial failed because the Prefect API did not answer (5xx, 429, a dropped connection)."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(result, PrefectHTTPStatusError):
        return result.response.status_code in (429, 500, 502, 503, 504)
    return isinstance(result, httpx.TransportError)


def sweep_id(trials: list[Spec]) -> str:
    return hashlib.sha256(",".join(sorted(t.trial_id or "" for t in trials)).encode()).hexdigest()[:12]


def _finished_earlier(spec: Spec) -> TrialOutcome | None:
    """The result of a trial whose run dir holds a completed evaluation."""
    report = finished_report(spec)
    if report is None:
        return None
    return TrialOutcome(trial_id=spec.trial_id or "", experiment=spec.experiment, outcome="completed",
                       mean_reward=report.mean_reward, std_reward=report.std_reward, timesteps=report.timesteps,
                       run_uri=spec.storage)


def _task_runner(runner: Runner, address: str | None, workers: int) -> Any:
    if runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise MissingExtraError("prefect_dask", "dask", "Running a sweep on Dask") from None
    if address:
        return DaskTaskRunner(address=address)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # our own cluster's start/stop chatter is not news
    import dask

    dask.config.set(LOCAL_CLUSTER_CONFIG)
    # in-process workers: a trial's own work (following its worker process, Prefect and MLflow calls) is light, while
    # worker processes of their own would each import Prefect and MLflow and take a share of the cores from training
    # loopback only: a scheduler that anyone on the network can reach runs the pickled code of whoever connects, and
    # with no address Dask's HTTP servers (dashboard, workers' health routes) listen on every interface
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": False,
                                          "dashboard_address": "127.0.0.1:0", "worker_dashboard_address": "127.0.0.1:0"})


def _parent_run(tracker: Tracker, name: str, trials: list[Spec], sid: str) -> str:
    """The sweep's MLflow run: reused when the same sweep runs again, so its trials stay nested under it."""
    exp_id = tracker.experiment_id(trials[0].experiment)
    found = tracker.client.search_runs([exp_id], filter_string=f"tags.`gymflow.sweep_id` = '{sid}'", max_results=1)
    if found:
        tracker.client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = tracker.client.create_run(exp_id, run_name=f"sweep-{name}", tags={"gymflow.sweep_id": sid, "gymflow.sweep": name})
    tracker.client.log_param(run.info.run_id, "trials", str(len(trials)))
    return run.info.run_id


def _sweep_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    try:
        source = config.input_source(params.get("spec"), params.get("spec_file"))
        name = config.load_raw(source, params.get("globals_files") or (), params.get("overrides") or ())[0].get("name")
    except Exception:  # noqa: BLE001 - the flow itself reports a bad spec
        name = None
    spec_file = params.get("spec_file")
    return f"sweep-{name or (Path(str(spec_file)).stem if spec_file else 'unnamed')}"


@flow(name="sweep", flow_run_name=_sweep_run_name, validate_parameters=True,
      on_completion=[events.sweep_finished], on_failure=[events.sweep_finished])
def sweep(spec: Spec | None = None, spec_file: str | None = None, overrides: list[str] | None = None,
          globals_files: list[str] | None = None, max_parallel: int | None = None, dask_address: str | None = None,
          runner: Runner | None = None) -> SweepResult:
    """Every trial of the spec's sweep section (skipping ones finished earlier), failures isolated, then a comparison.

    Args:
        spec: The experiment spec with its `sweep` section, filled in as a form. Leave empty to use `spec_file`.
        spec_file: Path (relative to the deployment's working directory) or URI of a spec YAML file.
        overrides: Changes on top of the spec, each `dotted.path=value`, as `gymflow sweep --set`.
        globals_files: Globals YAML files for `${name}` substitution, as `gymflow sweep --globals`.
        max_parallel: Trials running at once; default: the spec's `sweep.max_parallel`, else one per CPU core
            (all of them where each trial runs on a machine of its own, backend gcp).
        dask_address: A running Dask scheduler (tcp://host:port); default: the spec's, else a local cluster.
        runner: `dask`, or `threads` to run the trials in threads of this process; default: threads where the trials
            work on machines of their own (backend gcp) and no Dask scheduler is named, else dask.
    """
    log = prefect_logger()
    patient_events()  # a deployment's run: from here on, the event stream reconnects through a server restart
    try:  # every problem of the spec, before anything runs; a user error, so no traceback
        # the scheduler this run will use is the one checked: the argument wins over the spec's
        checked = [*(overrides or ()), *([f"sweep.dask_address={dask_address}"] if dask_address else [])]
        plan = preflight.check(config.input_source(spec, spec_file, keep_trial_id=False), globals_files or (),
                               checked, sweep=True, backend_check=backends.problems)
        base, expanded = plan.base, plan.trials
    except UserError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc))  # type: ignore[return-value]
    sweep_spec = base.sweep
    if sweep_spec is None:  # expand refuses a spec without one
        raise ValueError("preflight.check(sweep=True) returned a spec without a sweep section")
    varied = varied_paths(sweep_spec)
    name = base.name
    max_parallel = max_parallel or sweep_spec.max_parallel
    results: dict[str, TrialOutcome] = {}
    todo = []
    for trial_spec in expanded:
        earlier = _finished_earlier(trial_spec)
        if earlier is not None:
            results[trial_spec.trial_id or ""] = earlier
        else:
            todo.append(trial_spec)
    skipped = len(results)
    log.info("sweep %s: %d trials, %d finished earlier, %d to run", name, len(expanded), skipped, len(todo))
    address = resolve_address(sweep_spec, dask_address)
    # trials on machines of their own (a VM each): this process only follows them, from threads, all at once unless
    # max_parallel says otherwise; local Dask worker processes would only add start-up time
    remote = bool(todo) and backends.resolve(todo[0].backend.kind).features.remote
    runner = runner or ("threads" if remote and not address else "dask")
    workers = slots(len(todo), max_parallel or (backends.create(todo[0]).capacity() if todo else None), remote)
    todo = for_local_slots(todo, workers, remote=bool(address))
    in_process = bool(todo) and (runner == "threads" or not address)  # threads, or our own cluster's in-process workers
    if in_process:
        api_writes.install()  # the trials' flows in this process write to the Prefect API one at a time (see there)
    here = backends.create(todo[0]).sweep_scope(min(workers, len(todo))) if in_process else nullcontext()
    with here:  # workers started ahead overlap this process loading MLflow and Dask; those `gymflow sweep` started count
        tracking_uri = absolute_uri(base.tracking.uri or Tracker.default_uri())
        trials = [pin_for_workers(t, tracking_uri) for t in expanded]
        todo = [pin_for_workers(t, tracking_uri) for t in todo]
        sid = sweep_id(trials)
        with ThreadPoolExecutor(1, thread_name_prefix="gymflow-sweep-run") as background:
            tracked = background.submit(_tracked, tracking_uri, name, trials, sid)  # while the Dask cluster starts
            if todo:
                # our own cluster and the threads runner have one slot per trial at once: everything is submitted
                # now, and each slot starts its next trial without a round trip through this loop
                limit = (max_parallel or len(todo)) if address and runner == "dask" else len(todo)
                results.update(_run_all(todo, tracked, _task_runner(runner, address, workers), limit, in_process))
            tracker, parent = tracked.result()
    return _compare(name, trials, varied, results, skipped, tracker, parent)


def _tracked(tracking_uri: str, name: str, trials: list[Spec], sid: str) -> tuple[Tracker, str]:
    tracker = Tracker(tracking_uri)
    return tracker, _parent_run(tracker, name, trials, sid)


def _run_all(todo: list[Spec], tracked: Future[tuple[Tracker, str]], task_runner: Any, limit: int,
             in_process: bool) -> dict[str, TrialOutcome]:
    """Submit at most `limit` trials at a time, under the sweep's MLflow run; collect every result, whatever happens to each."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    results: dict[str, TrialOutcome] = {}
    pending = list(todo)
    # the trials submitted from here carry these settings (the sweep flow's own heartbeats already started): a
    # temporary_settings per trial in run_trial costs about 0.3 s of this process's CPU each
    quiet = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None} if in_process else {}
    with task_runner, temporary_settings(updates=quiet):
        parent = tracked.result()[1]
        running: dict[Any, Spec] = {}
        while pending or running:
            while pending and len(running) < limit:
                spec = pending.pop(0)
                params = {"spec": spec, "parent_run_id": parent, "in_sweep_process": in_process}
                running[task_runner.submit(run_trial, parameters=params)] = spec
            done = next(iter(as_completed(list(running))))
            spec = running.pop(done)
            try:
                results[spec.trial_id or ""] = done.result()
            except BaseException as exc:  # noqa: BLE001 - a lost Dask worker fails one trial, not the sweep
                results[spec.trial_id or ""] = TrialOutcome(trial_id=spec.trial_id or "", experiment=spec.experiment,
                                                           outcome="failed", run_uri=spec.storage, error=f"{type(exc).__name__}: {exc}")
    return results


def _compare(name: str, trials: list[Spec], varied: list[str], results: dict[str, TrialOutcome], skipped: int,
             tracker: Tracker, parent: str) -> SweepResult:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from gymflow.sweep import varied_values

    rows = []
    for spec in trials:
        r = results[spec.trial_id or ""]
        rows.append(r.model_copy(update={"config": varied_values(spec, varied), "seed": spec.seed,
                                         "run_uri": r.run_uri or spec.storage}))
    configs = compare.summarise(rows)
    failed = sum(r.outcome != "completed" for r in rows)
    folder = common_parent([s.storage for s in trials])
    store = open_run(folder)  # written through the store: the trials' run dirs may live in a bucket
    plot_name = f"sweep-{name}.png"
    store.write_bytes(plot_name, compare.plot_curves(rows, f"sweep {name}: evaluation reward by configuration"))
    store.write_json(f"sweep-{name}.json", compare.table(rows))
    tracker.client.log_artifact(parent, str(store.fetch(plot_name)))
    plot = f"{folder.rstrip('/')}/{plot_name}"
    if configs:
        tracker.client.log_metric(parent, "best_mean_reward", configs[0].mean_reward)
    tracker.set_tags(parent, {"gymflow.best_config": configs[0].config if configs else "", "gymflow.failed_trials": str(failed)})
    tracker.finish(parent, "FAILED" if failed else "FINISHED")
    create_table_artifact(compare.table(rows), key=f"sweep-{_slug(name)}", description=f"trials of sweep {name}")
    best = configs[0].config if configs else None
    create_markdown_artifact(_summary_markdown(name, configs, rows, failed), description=f"sweep {name}")
    return returned.keep(SweepResult(name=name, rows=rows, configs=configs, best=best, failed=failed, skipped=skipped,
                                     mlflow_parent_run_id=parent, plot=str(plot)))


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:80] or "sweep"


def _summary_markdown(name: str, configs: list[compare.ConfigSummary], rows: list[TrialOutcome], failed: int) -> str:
    lines = [f"# Sweep `{name}`", "", f"{len(rows)} trials, {failed} failed.", "",
             "| configuration | mean reward over seeds | seeds | failed |", "| --- | --- | --- | --- |"]
    lines += [f"| {c.config} | {c.mean_reward:.2f} ± {c.std_over_seeds:.2f} | {c.seeds} | {c.failed} |" for c in configs]
    if configs:
        lines += ["", f"**Best configuration:** {configs[0].config}"]
    for row in rows:
        if row.outcome != "completed":
            lines.append(f"- trial `{row.trial_id}` {row.outcome}: {row.error}")
    return "\n".join(lines) + "\n"
