"""Sweeps: expansion and validation, parallel trials on Dask, failure isolation, resume, comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import base_spec
from prefect_stack import free_port
from gymflow.sweep import combinations, expand
from gymflow.spec import SweepSpec


def _sweep_spec(tmp_path: Path, sweep: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    spec = base_spec(sweep=sweep, **overrides)
    spec.setdefault("storage", str(tmp_path / "runs" / "${experiment}" / "${trial_id}"))
    return spec


def test_grid_crossed_with_seeds_gives_stable_content_derived_ids(tmp_path: Path) -> None:
    spec = _sweep_spec(tmp_path, {"grid": {"algorithm.hyperparams.learning_rate": [1e-3, 3e-4]}, "seeds": [0, 1, 2]})
    base, trials = expand(spec)
    assert len(trials) == 6 and base.sweep is not None
    assert {(t.algorithm.hyperparams["learning_rate"], t.seed) for t in trials} == {(lr, s) for lr in (1e-3, 3e-4) for s in (0, 1, 2)}
    assert all(t.sweep is None and t.storage == str(tmp_path / "runs" / "test" / t.trial_id) for t in trials)
    assert len({t.trial_id for t in trials}) == 6
    assert [t.trial_id for t in expand(spec)[1]] == [t.trial_id for t in trials]


def test_random_search_is_seeded_and_respects_distributions() -> None:
    sweep = SweepSpec.model_validate({"random": {"n": 20, "seed": 3, "params": {
        "algorithm.hyperparams.learning_rate": {"distribution": "loguniform", "low": 1e-5, "high": 1e-2},
        "algorithm.hyperparams.n_epochs": {"distribution": "int", "low": 1, "high": 4},
        "algorithm.hyperparams.gamma": {"distribution": "uniform", "low": 0.9, "high": 0.99},
        "env.normalize": {"distribution": "choice", "values": [True, False]}}}})
    combos = combinations(sweep, default_seed=7)
    assert len(combos) == 20 and combos == combinations(sweep, default_seed=7)
    assert all(1e-5 <= c["algorithm.hyperparams.learning_rate"] < 1e-2 for c in combos)
    assert {c["algorithm.hyperparams.n_epochs"] for c in combos} <= {1, 2, 3, 4}
    assert all(0.9 <= c["algorithm.hyperparams.gamma"] < 0.99 and c["seed"] == 7 for c in combos)
    assert {c["env.normalize"] for c in combos} == {True, False}


@pytest.mark.parametrize(("sweep", "message"), [
    ({"grid": {"algorithm.learning_rate": [1]}},
     "sweep.grid.algorithm.learning_rate: 'algorithm.learning_rate' is not a spec field."),
    ({"grid": {"algorithm.hyperparams.learning_rate": []}},
     "sweep.grid: grid.algorithm.hyperparams.learning_rate is empty; give at least one value"),
    ({"random": {"n": 2, "params": {"algorithm.hyperparams.gamma": {"distribution": "uniform", "low": 0.99, "high": 0.9}}}},
     "sweep.random.params.algorithm.hyperparams.gamma: low (0.99) must be less than high (0.9)"),
    ({"grid": {"budget.timesteps": [0]}}, "budget.timesteps: must be >= 1, got 0 (in the trial with budget.timesteps=0, seed=0)"),
    ({"seeds": [1, 1]}, "sweep.seeds: seeds must be distinct non-negative integers"),
])
def test_bad_sweeps_are_refused_with_the_path_and_the_fix(sweep: dict[str, Any], message: str, tmp_path: Path,
                                                         write_spec: Any, cli: Any) -> None:
    result = cli("sweep", write_spec(_sweep_spec(tmp_path, sweep)))
    assert result.code == 2
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "runs").exists()


def test_sweep_needs_a_sweep_section(write_spec: Any, cli: Any) -> None:
    result = cli("sweep", write_spec())
    assert result.code == 2 and "sweep: this spec has no sweep section" in result.stderr


SMALL = {"env": {"id": "CartPole-v1", "n_envs": 2}, "budget": {"timesteps": 512},
         "evaluation": {"every_timesteps": 256, "episodes": 2}}


@pytest.mark.usefixtures("prefect_server", "mlflow_uri")
def test_sweep_runs_trials_in_parallel_on_a_local_cluster_and_compares_them(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from gymflow.cli import pipeline
    from rich.console import Console

    # trials of 1024 steps (about 2 s of training): a trial costs this process about 1.3 s of CPU in Prefect and MLflow
    # calls, so trials much shorter than that cannot overlap however the sweep schedules them
    spec = _sweep_spec(tmp_path, {"grid": {"algorithm.hyperparams.learning_rate": [1e-3, 3e-4]}, "seeds": [0, 1, 2],
                                  "max_parallel": 2}, **{**SMALL, "budget": {"timesteps": 1024}})
    spec["name"] = f"parallel-{uuid.uuid4().hex[:8]}"  # its trial flow runs, and no other test's, are counted below
    base, _ = expand(spec)
    with _listening_sockets() as listening:
        state, result = pipeline.run_sweep(spec, [], [], Console(file=open(os.devnull, "w")))
    # every service of the sweep (Dask scheduler, dashboard, workers; the Prefect server) is on loopback only
    assert listening and all(ip in ("127.0.0.1", "::1") for ip, _ in listening), listening
    assert state.is_completed(), state.message
    assert len(result.rows) == 6 and result.failed == 0
    assert {c.config for c in result.configs} == {"learning_rate=0.001", "learning_rate=0.0003"}
    assert all(c.seeds == 3 for c in result.configs) and result.best in {c.config for c in result.configs}
    assert Path(result.plot).read_bytes()[:4] == b"\x89PNG"
    # trials ran two at a time: at some moment two trial flow runs were running, never three
    peak, spans = _max_concurrency(base.name)
    assert peak == 2, f"at most {peak} trial(s) at a time; trial flow runs (s): {spans}"
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    parent = client.get_run(result.mlflow_parent_run_id)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 6
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {f"sweep-{base.name}.png"}
    assert parent.data.metrics["best_mean_reward"] == pytest.approx(result.configs[0].mean_reward)
    # two trials at a time on this machine: each worker gets its share of the cores for torch
    threads = {json.loads((Path(r.run_uri) / "spec.json").read_text())["backend"]["torch_threads"] for r in result.rows}
    assert threads == {max(1, (os.cpu_count() or 1) // 2)}


def test_gymflow_sweep_starts_the_first_workers_before_loading_prefect_and_the_flow_adds_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import backends
    from backends.local.backend import _starting
    from gymflow.cli import pipeline
    from gymflow.procs import pid_alive
    from gymflow.sweep import DASK_ADDRESS_ENV, for_local_slots

    base, trials = expand(_sweep_spec(tmp_path, {"seeds": [0, 1, 2], "max_parallel": 2}, **SMALL))
    with pipeline.sweep_scope(base, trials):
        started = dict(_starting)
        assert len(started) == 2 and all(pid_alive(pid) for pid in started)
        # the sweep flow opens the same backend's scope for its slots: the two already starting count
        with backends.create(for_local_slots(trials[:1], 2, remote=False)[0]).sweep_scope(2):
            assert dict(_starting) == started
    assert not _starting and not any(pid_alive(pid) for pid in started)  # released when the scope ended
    # trials that run on an existing cluster are not started here
    monkeypatch.setenv(DASK_ADDRESS_ENV, "tcp://127.0.0.1:1")
    with pipeline.sweep_scope(base, trials):
        assert not _starting


def test_the_worker_applies_the_torch_thread_limit_its_backend_sets() -> None:
    probe = ("import torch; from gymflow.runtime.algorithms import limit_threads; limit_threads(); "
             "print(torch.get_num_threads())")
    env = {**os.environ, "GYMFLOW_TORCH_THREADS": "1"}
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.strip() == "1"


@contextmanager
def _listening_sockets() -> Iterator[set[tuple[str, int]]]:
    """The addresses this process and its children listen on, sampled every 0.2 s while the block runs."""
    import psutil

    seen: set[tuple[str, int]] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            me = psutil.Process()
            for proc in [me, *me.children(recursive=True)]:
                try:
                    seen.update((c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                                if c.status == psutil.CONN_LISTEN)
                except psutil.Error:
                    pass

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def _max_concurrency(experiment: str) -> tuple[int, list[str]]:
    """The most trial flow runs of the experiment that were running at the same moment, and their spans (for a
    failure's message: seconds from the first start)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:  # only this experiment's runs, however many the session made
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["trial"])),
                                     flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"{experiment}-")), limit=200)
    spans = [(r.start_time, r.end_time) for r in runs if r.name.startswith(f"{experiment}-") and r.start_time and r.end_time]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    first = min((s for s, _ in spans), default=None)
    if first is None:
        return peak, []
    with get_client(sync_client=True) as client:  # the sweep's tasks that ran each trial flow: when each started
        tasks = [client.read_task_run(r.parent_task_run_id) for r in runs if r.parent_task_run_id]
    shown = [f"flow {(s - first).total_seconds():.1f}-{(e - first).total_seconds():.1f}" for s, e in sorted(spans)]
    shown += [f"task {t.name} {(t.start_time - first).total_seconds():.1f}" for t in tasks if t.start_time]
    return peak, shown


@pytest.mark.usefixtures("prefect_server", "mlflow_uri")
def test_a_failing_trial_does_not_stop_the_others_and_a_rerun_completes_only_what_was_missing(
        tmp_path: Path, write_spec: Any, cli: Any) -> None:
    # fail_after 300 steps: the 512-step trials blow up, the 256-step ones finish
    spec = _sweep_spec(tmp_path, {"grid": {"budget.timesteps": [256, 512]}, "seeds": [0, 1], "max_parallel": 2},
                       env={"id": "sim_envs:ExplodingEnv", "kwargs": {"fail_after": 300}, "n_envs": 1},
                       evaluation={"every_timesteps": 128, "episodes": 1}, checkpoint={"every_timesteps": 128})
    spec_file = write_spec(spec)
    result = cli("sweep", spec_file)
    assert result.code == 1
    text = " ".join(result.stdout.split())
    assert text.count("failed ") >= 2 and "simulator diverged" in text
    # what a person sees meanwhile: a line per trial as it starts and ends (a table on a terminal), not Prefect's logs
    board = result.stderr
    assert board.count("completed: reward ") == 2 and board.count(") failed: ") == 2, board
    assert "4/4 done: 2 completed, 2 failed; best so far " in board and "Task run 'train'" not in board
    assert "best configuration: timesteps=256" in text
    done_before = {p.parent.name for p in (tmp_path / "runs").rglob("eval.json")}
    assert len(done_before) == 2

    # The same sweep again: finished trials are skipped, failed ones resume from their last checkpoint
    # (256 of 512 steps), which is short of the simulator's 300-step fault, so now they complete.
    result = cli("sweep", spec_file)
    text = " ".join(result.stdout.split())
    assert result.code == 0, text
    assert "2 trial(s) had finished earlier and were not run again" in text
    resumed = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("status.json")]
    assert sorted(s.get("resumed_from") or 0 for s in resumed) == [0, 0, 256, 256]
    assert len({p.parent.name for p in (tmp_path / "runs").rglob("eval.json")}) == 4
    logs = [p.read_text() for p in (tmp_path / "runs").rglob("worker.log")]
    assert sum("resuming from the checkpoint at 256 timesteps" in log for log in logs) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server", "mlflow_uri")
def test_sweep_on_an_existing_dask_cluster_spreads_trials_over_its_workers(tmp_path: Path) -> None:
    from rich.console import Console

    from gymflow.cli import pipeline

    port = free_port()
    env = {**os.environ}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(3)
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}",
                                           "--nthreads", "1", "--nworkers", "1", "--no-dashboard"],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_workers(f"tcp://127.0.0.1:{port}", 2)
        spec = _sweep_spec(tmp_path, {"grid": {"algorithm.hyperparams.learning_rate": [1e-3, 3e-4]}, "seeds": [0, 1],
                                      "dask_address": f"tcp://127.0.0.1:{port}"}, **SMALL)
        state, result = pipeline.run_sweep(spec, [], [], Console(file=open(os.devnull, "w")))
        assert state.is_completed() and result.failed == 0
        hosts = {_worker_pid_parent(Path(r.run_uri)) for r in result.rows}
        assert len(hosts) == 2  # the trials' workers were started by both Dask workers
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)


def _wait_for_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(n, timeout=60)


def _worker_pid_parent(run_dir: Path) -> int:
    import json

    return int(json.loads((run_dir / "status.json").read_text())["parent_pid"])


def test_the_live_table_fits_the_terminal_and_says_how_many_rows_it_hides(tmp_path: Path) -> None:
    from rich.console import Console

    from gymflow.cli.board import Board

    _, trials = expand(_sweep_spec(tmp_path, {"grid": {"algorithm.hyperparams.learning_rate": [1e-3, 3e-4]},
                                              "seeds": list(range(10))}, **SMALL))
    board = Board(trials, ["algorithm.hyperparams.learning_rate"])
    assert board.refresh() == []  # nothing started: every row waits
    console = Console(width=160, record=True, force_terminal=True)
    console.print(board.render(height=12))
    text = console.export_text()
    assert text.startswith("0/20 done: 20 waiting")
    assert text.count("waiting") == 7 and "… and 14 more" in text  # 12 lines: the summary, a header, 6 rows, the rest
    assert "learning_rate=0.001, seed 0" in text
