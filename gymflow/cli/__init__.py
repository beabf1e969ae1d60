"""The `gymflow` command line. User errors print one clear message and exit with code 2."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from gymflow.errors import UserError

app = typer.Typer(
    name="gymflow",
    help="Run reinforcement-learning experiments from one YAML spec.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
worker_app = typer.Typer(help="The worker program: runs inside a trial, on any backend.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# str, not Path: a spec or globals file may be a URI (gs://bucket/spec.yaml), which a Path would mangle
SpecArg = Annotated[str, typer.Argument(help="The experiment spec (YAML): a path or URI.", show_default=False, metavar="SPEC")]
GlobalsOpt = Annotated[Optional[list[str]], typer.Option("--globals", "-g", metavar="FILE",
                                                          help="YAML file of variables and shared fields; repeatable.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="PATH=VALUE",
                                                     help="Override a field: dotted.path=value (YAML-typed); repeatable.")]


def _untyped_flags() -> None:
    """Typer 0.2x prints a type beside every option in --help, `<bool>` beside flags such as --help itself, which
    take no value: show none there."""
    try:
        from typer.core import TyperOption
    except ImportError:  # an older Typer, which shows no types
        return
    shown = TyperOption.display_type_rich

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_untyped_flags()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"gymflow {version('gymflow')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", help="Print gymflow's version and exit.", callback=_version,
                                               is_eager=True)] = False) -> None:
    """Run reinforcement-learning experiments from one YAML spec."""


def _setup_logging(level: int = logging.WARNING) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=err, show_path=False)], force=True)


def _plan(spec: str, globals_: list[str] | None, sets: list[str] | None, sweep: bool | None = None,
          run_dirs: bool = False) -> Any:
    """Everything run and sweep need, checked at once before anything exists (gymflow.preflight): exit 2 here."""
    import backends
    from gymflow import preflight

    return preflight.check(spec, globals_ or [], sets or [], sweep=sweep, backend_check=backends.problems,
                           run_dirs=run_dirs)


@app.command()
def init(
    algo: Annotated[str, typer.Option("--algo", "-a", help="Algorithm: ppo, a2c, dqn, sac, td3, ddpg, tqc, qrdqn, trpo, recurrentppo, ars.")],
    env: Annotated[str, typer.Option("--env", "-e", help="Gymnasium env id or 'package.module:Class'.")],
    name: Annotated[Optional[str], typer.Option(help="Experiment name (default: from env and algorithm).")] = None,
) -> None:
    """Print a complete, commented spec with tuned hyperparameters."""
    from gymflow import config
    from gymflow.init import render

    text = render(algo, env, name)
    config.resolve(config.parse_yaml(text, "generated spec"))  # never print a spec that does not validate
    sys.stdout.write(text)


@app.command()
def validate(
    spec: SpecArg,
    globals_: GlobalsOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the resolved spec as JSON.")] = False,
) -> None:
    """Check a spec (every problem at once) and print the resolved spec."""
    import json

    import yaml

    plan = _plan(spec, globals_, set_)
    resolved = plan.base
    data = resolved.model_dump(mode="json")
    sys.stdout.write(json.dumps(data, indent=2) + "\n" if as_json else yaml.safe_dump(data, sort_keys=False))
    what = f"a sweep of {len(plan.trials)} trials, each checked" if resolved.sweep else f"trial {resolved.trial_id}"
    err.print(f"[green]ok[/green]: {spec} is valid ({what})", highlight=False)
    import backends

    for note in backends.notes(plan.trials, resolved.sweep.max_parallel if resolved.sweep else None):
        err.print(note, highlight=False, markup=False)


@app.command()
def run(spec: SpecArg, globals_: GlobalsOpt = None, set_: SetOpt = None) -> None:
    """Run one trial through provision, setup, train, evaluate, store and teardown (a Prefect flow)."""
    from gymflow.cli import pipeline

    resolved = _plan(spec, globals_, set_, run_dirs=True).base
    result = pipeline.run_trial(resolved, err)
    raise typer.Exit(pipeline.exit_code(result))


@app.command()
def sweep(spec: SpecArg, globals_: GlobalsOpt = None, set_: SetOpt = None,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Stream every trial's Prefect log lines instead "
                                                "of the live table of trials.")] = False) -> None:
    """Run every trial of the spec's sweep section in parallel (on Dask; on VMs for gcp) and compare them."""
    from contextlib import nullcontext

    from gymflow import sweep as sweeps
    from gymflow.cli import board, pipeline

    plan = _plan(spec, globals_, set_, sweep=True, run_dirs=True)  # every problem, exit 2, before anything runs
    base, trials = plan.base, plan.trials
    err.print(f"sweep [bold]{base.name}[/bold]: {len(trials)} trials", highlight=False)
    varied = sweeps.varied_paths(base.sweep) if base.sweep else []
    shown = nullcontext() if verbose else board.shown(board.Board(trials, varied), err)
    with pipeline.sweep_scope(base, trials), shown:  # the scope also ends what the sweep could not start
        state, result = pipeline.run_sweep(str(spec), [str(g) for g in globals_ or []], list(set_ or []), err)
    if not state.is_completed():
        err.print(f"[bold red]sweep failed[/bold red]: {result if isinstance(result, BaseException) else state.message}")
        raise typer.Exit(1)
    pipeline.print_sweep(result, out)
    raise typer.Exit(1 if result.failed else 0)


server_app = typer.Typer(help="The local Prefect server gymflow starts once and reuses.", no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 4200,
    database: Annotated[Optional[str], typer.Option(
        help="postgresql://USER:PASSWORD@HOST:PORT/DATABASE to keep the runs in PostgreSQL (remembered for later "
             "starts), or `sqlite` for Prefect's default file.", show_default=False)] = None,
) -> None:
    """Start the background Prefect server (or report the running one)."""
    from gymflow.cli import database as databases
    from gymflow.cli import server

    info = server.start(port, databases.parse(database) if database is not None else None)
    out.print(f"Prefect server running at {info.url} (pid {info.pid}) on {info.database.shown()}; "
              f"UI: {info.url}, log: {info.log}", highlight=False)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the background Prefect server."""
    from gymflow.cli import server

    out.print("stopped" if server.stop() else "no gymflow Prefect server was running")


@server_app.command("status")
def server_status() -> None:
    """Whether the background Prefect server runs, and where."""
    from gymflow.cli import server

    info = server.status()
    if info is None:
        out.print("not running (`gymflow run` starts it; `gymflow server start` starts it now)")
        raise typer.Exit(1)
    out.print(f"running at {info.url} (pid {info.pid}) on {info.database.shown()}", highlight=False)


alerts_app = typer.Typer(help="Alerts: the Prefect automations in deployments/automations.yaml.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
AutomationsOpt = Annotated[Optional[Path], typer.Option("--file", "-f", help="Automations YAML [default: deployments/automations.yaml].")]


def _prefect_api(api_url: str) -> Any:
    """Prefect pointed at this API."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: api_url})


def _api_url() -> str:
    """The configured Prefect API, else gymflow's background server's (started if needed)."""
    from gymflow.cli import server

    return server.configured_api_url() or server.start().api_url


@alerts_app.command("apply")
def alerts_apply(
    webhook: Annotated[Optional[str], typer.Option(help="Send alerts to this webhook URL (saved as the block 'gymflow-alerts').")] = None,
    block: Annotated[Optional[str], typer.Option(help="Send alerts through this notification block, TYPE/NAME (e.g. slack-webhook/team).")] = None,
    file: AutomationsOpt = None,
    heartbeats: Annotated[Optional[bool], typer.Option(
        "--heartbeats/--no-heartbeats", show_default=False,
        help="Also mark runs whose heartbeats stopped for 10 minutes Crashed (deployments/automations-postgresql.yaml) "
             "[default: when gymflow's background server runs on PostgreSQL].")] = None,
) -> None:
    """Create or update the alert automations on the Prefect server, notifying through one block."""
    from gymflow.cli import alerts, server

    path = file or alerts.default_file()
    items = alerts.load(path)
    alerts.check_target(block, webhook)  # bad input: exit 2 before any server is contacted
    api_url = _api_url()
    if heartbeats is None:
        heartbeats = file is None and server.dialect_of(api_url) == "postgresql"
    sets = [(path, items)] + ([(alerts.heartbeat_file(), alerts.load(alerts.heartbeat_file()))] if heartbeats else [])
    with _prefect_api(api_url):
        applied = alerts.apply(sets, block=block, webhook=webhook)
    for item in applied:
        out.print(f"{'created' if item.created else 'updated'} automation [bold]{item.name}[/bold] ({item.id})", highlight=False)


@alerts_app.command("remove")
def alerts_remove(file: AutomationsOpt = None) -> None:
    """Delete the alert automations from the Prefect server (with the heartbeat watch, unless --file is given)."""
    from gymflow.cli import alerts

    items = alerts.load(file) if file else alerts.load(alerts.default_file()) + alerts.load(alerts.heartbeat_file())
    with _prefect_api(_api_url()):
        removed = alerts.remove(items)
    out.print(f"removed {len(removed)} automation(s)" + (f": {', '.join(removed)}" if removed else ""), highlight=False)


def _duration(text: str) -> float:
    """'90s', '30m', '6h', '2d' (or plain seconds) -> seconds; a UserError naming the option otherwise."""
    from gymflow.spec import duration_s

    try:
        return duration_s(text or "")
    except ValueError:
        raise UserError(f"--older-than {text!r}: give a duration such as 90s, 30m, 6h or 2d") from None


@app.command()
def gc(
    older_than: Annotated[str, typer.Option("--older-than", help="Only what started longer ago than this (90s, 30m, 6h, 2d).")] = "0s",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be done.")] = False,
    backend: Annotated[Optional[str], typer.Option("--backend", help="Only trials of this backend (local, gcp, azure); "
                                                   "a cloud backend's VMs or jobs that no live trial owns are deleted too.")] = None,
    spec_file: Annotated[Optional[str], typer.Option("--spec", help="A spec whose backend settings (project, endpoint, "
                                                     "credentials) say where to look for a cloud backend's VMs or jobs.")] = None,
) -> None:
    """End the records and resources of trials whose orchestrator died: flow runs still Running become Crashed, MLflow
    runs still RUNNING become FAILED, what they provisioned is torn down, and with --backend gcp|azure the VMs or jobs
    gymflow created (found by label) that no live trial owns are deleted. Trials that run are never touched."""
    from rich.table import Table

    import backends as registry
    from gymflow.cli import server

    seconds = _duration(older_than)
    if backend is not None and backend not in registry.available():
        raise UserError(f"--backend {backend!r}: not a backend; use one of {', '.join(sorted(registry.available()))}")
    from tasks import gc as reaper

    machines = reaper.machines_backend(backend, spec_file)
    backend = backend or (machines.name if machines is not None else None)

    api_url = server.configured_api_url()
    if api_url is None:
        running = server.status()
        api_url = running.api_url if running else None
    if api_url:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            found = reaper.collect(dry_run=dry_run, older_than_s=seconds, backend=backend, machines_of=machines)
    else:
        err.print("no Prefect server is configured or running: only MLflow runs are checked", style="yellow")
        found = reaper.collect(dry_run=dry_run, older_than_s=seconds, backend=backend, prefect=False, machines_of=machines)
    if not found:
        out.print("nothing to collect: every trial still marked running has a live owner")
        return
    table = Table("kind", "id", "trial", "run dir", "age", "why", "done" if not dry_run else "would do")
    for o in found:
        table.add_row(o.kind, o.id, o.trial_id, o.run_uri, f"{o.age_s / 60:.0f} min", o.reason, o.action)
    out.print(table)


@app.command("backends")
def list_backends() -> None:
    """List the registered backends and what each supports."""
    from rich.table import Table

    import backends

    table = Table("backend", "GPU", "spot", "time limit", "class")
    for name, cls in backends.available().items():
        if isinstance(cls, str):
            table.add_row(name, "", "", "", f"[red]{cls}[/red]")
            continue
        f = cls.features
        table.add_row(name, *("yes" if v else "no" for v in (f.gpu, f.spot, f.time_limit)), f"{cls.__module__}:{cls.__name__}")
    out.print(table)


@worker_app.command("train")
def worker_train(
    run_uri: Annotated[str, typer.Argument(help="The run directory (path or URI).")],
    standby: Annotated[float, typer.Option(help="After training, wait up to this many seconds to be handed the "
                                                "evaluate phase (the local backend's warm start).", min=0)] = 0.0,
    wait: Annotated[float, typer.Option(help="Load torch and SB3, then wait up to this many seconds to be told to "
                                             "start (the local backend starts the worker during setup).", min=0)] = 0.0,
    reuse: Annotated[float, typer.Option(help="After evaluating, wait up to this many seconds to be handed the next "
                                              "trial of the same orchestrator (the local backend in sweeps).", min=0)] = 0.0,
) -> None:
    """Train the run dir's spec to its budget, resuming from the newest checkpoint."""
    from gymflow.storage import open_run

    _setup_logging(logging.INFO)
    if wait or standby or reuse:  # the local backend's warm starts
        from backends.local import serve

        serve.serve(run_uri, wait, standby, reuse, _train_one, worker_evaluate, _warm_up)
        return
    _train_one(open_run(run_uri))


@worker_app.command("pool", hidden=True)
def worker_pool(
    wait: Annotated[float, typer.Option(help="Once handed a trial, wait up to this many seconds to be told to start.", min=0)],
    standby: Annotated[float, typer.Option(help="As for `worker train`.", min=0)] = 0.0,
    reuse: Annotated[float, typer.Option(help="Wait up to this many seconds, idle, to be handed a trial; "
                                              "and as long again after each trial.", min=0)] = 0.0,
) -> None:
    """Load torch and SB3, then wait in the pool of the orchestrator that started it to be handed a trial
    (the local backend starts these ahead of a sweep's first trials)."""
    from backends.local import serve
    from gymflow import worker

    _setup_logging(logging.INFO)
    worker.watch_parent()
    _warm_up()
    from gymflow.runtime.plot import pyplot

    pyplot()  # for the learning curve at the end of its first trial
    serve.serve(serve.next_trial(reuse), wait, standby, reuse, _train_one, worker_evaluate, _warm_up)


def _train_one(store: Any) -> None:
    """Train one run dir to its end; exit non-zero unless training completed."""
    from gymflow import worker

    with _progress_bar(store) as hook:
        state = worker.train(store, hook)
    if state != "completed":
        err.print(f"training {state}; rerun the same command to resume")
        raise typer.Exit(130 if state == "interrupted" else 1)


def _warm_up() -> None:
    from gymflow.runtime.algorithms import warm_up

    warm_up()
    import gymflow.runtime.evaluation  # noqa: F401
    import gymflow.runtime.trainer  # noqa: F401


@worker_app.command("evaluate")
def worker_evaluate(run_uri: Annotated[str, typer.Argument(help="The run directory (path or URI).")]) -> None:
    """Evaluate the run dir's final model and write eval.json."""
    from gymflow import worker
    from gymflow.storage import open_run

    _setup_logging(logging.INFO)
    report = worker.evaluate(open_run(run_uri))
    out.print(f"mean reward {report.mean_reward:.2f} ± {report.std_reward:.2f} "
              f"(length {report.mean_length:.1f}) over {report.n_episodes} episodes")


@worker_app.command("agent")
def worker_agent(
    run_uri: Annotated[str, typer.Argument(help="The run directory (path or URI).")],
    poll_s: Annotated[float, typer.Option(help="How often the run dir is checked for a launch or a stop.", min=0.1)] = 2.0,
    idle_exit_s: Annotated[Optional[float], typer.Option(help="Exit after this long without a launch; default: never "
                                                         "(the machine is deleted by its trial's teardown).", min=0)] = None,
) -> None:
    """Serve the worker phases the orchestrator requests through the run dir (how a cloud VM runs them: no SSH)."""
    from gymflow import agent
    from gymflow.storage import open_run

    _setup_logging(logging.INFO)
    agent.serve(open_run(run_uri), poll_s, idle_exit_s)


def _progress_bar(store: Any) -> Any:
    """A Rich progress bar over the budget when attached to a terminal; otherwise no hook."""
    from contextlib import contextmanager, nullcontext

    if not err.is_terminal or os.environ.get("CI"):
        return nullcontext(None)

    @contextmanager
    def bar() -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from gymflow.runtime.trainer import load_spec

        budget = load_spec(store).budget
        total = budget.timesteps or budget.episodes
        unit = "timesteps" if budget.timesteps else "episodes"
        with Progress(TextColumn(f"training ({unit})"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err, transient=False) as progress:
            task = progress.add_task("train", total=total)
            last = [0]

            def hook(timesteps: int, episodes: int) -> None:
                value = timesteps if budget.timesteps else episodes
                if value - last[0] >= 256 or value >= (total or 0):
                    last[0] = value
                    progress.update(task, completed=value)

            yield hook

    return bar()


def main() -> None:
    """Console-script entry: user errors become one message and exit code 2."""
    try:
        run_cli()
    except SystemExit as exc:
        _exit_now(exc.code)
    _exit_now(0)


def _exit_now(code: int | str | None) -> None:
    """Exit once threads, atexit hooks (Prefect's log and event queues, MLflow) and streams are done, skipping
    the interpreter's teardown of every imported module: that took ~1.4 s after a `gymflow run`."""
    import atexit
    import threading

    if isinstance(code, str):
        err.print(code)
    # what the interpreter does first at exit: tell thread pools to finish (their workers wait on a
    # queue until told), then join the non-daemon threads
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:  # not CPython as we know it: the ordinary, slower exit
        sys.exit(code)
    shutdown()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _is_usage_error(exc: Exception) -> bool:
    """Click's usage errors; Typer 0.2x raises those of its own copy of click (typer._click)."""
    import click

    kinds: list[type] = [click.exceptions.ClickException]
    try:
        from typer.exceptions import TyperException

        kinds.append(TyperException)
    except ImportError:  # an older Typer, which raises click's own
        pass
    return isinstance(exc, tuple(kinds)) and hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int)


def run_cli() -> None:
    """The CLI with exit codes as SystemExit (what `main` runs; tests call it in-process)."""
    try:
        code = app(standalone_mode=False)  # returns typer.Exit codes instead of raising them
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except UserError as exc:
        from rich.text import Text

        err.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:
        if _is_usage_error(exc):  # a missing or bad option: click's message, exit 2
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if os.environ.get("GYMFLOW_DEBUG"):
            raise
        from rich.text import Text

        err.print(Text.assemble(("failed: ", "bold red"), f"{type(exc).__name__}: {exc}"), soft_wrap=True)
        err.print("(set GYMFLOW_DEBUG=1 to see the traceback)", style="dim")
        sys.exit(1)
