"""The local backend: the worker is a subprocess on this machine.

The run dir may be a local folder or a bucket (gs://, az://). Either way this backend keeps its
own files - the workers' pid files, their console output and the claim markers of warm
workers - in the run dir's local folder (``RunStore.workdir``: the folder itself, or the local
mirror of a bucket that the worker writes under), which the worker it starts shares.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from backends.base import Backend, Features, Handle, Phase, Timing, WorkerState
from gymflow.errors import Problem
from gymflow.procs import pid_alive
from gymflow.runtime.algorithms import THREADS_ENV
from gymflow.spec import LocalBackendSpec, Spec
from gymflow.storage import local_path, open_run
from gymflow.worker import PARENT_ENV
from backends.local import pool
from backends.local.serve import STANDBY_FILE, WAITING_FILE

logger = logging.getLogger(__name__)

STOP_GRACE_S = 15.0
PRESTART_WAIT_S = 120.0  # how long a worker started in setup waits for the train phase
CLAIM_PATIENCE_S = 15.0  # how long the train phase waits for that worker to announce itself
PRESTART_PATIENCE_S = 30.0  # how long setup waits for a worker started ahead of the trials to finish starting
_processes: dict[int, subprocess.Popen[bytes]] = {}
_serving: dict[int, str] = {}  # pooled worker pid -> the run dir it was last handed
_starting: dict[int, Path] = {}  # prestarted workers never handed a trial -> their pool


def _alive(pid: int) -> bool:
    proc = _processes.get(pid)
    if proc is not None:
        return proc.poll() is None
    return pid_alive(pid)


def _is_worker_of(pid: int, run_uri: str) -> bool:
    """Whether pid is still a gymflow worker on this run dir (a recorded pid may have been reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"worker" in cmdline and run_uri.encode() in cmdline


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the worker leads its own session, so this reaches its children too
    except ProcessLookupError:
        pass


class LocalBackend(Backend):
    """Runs `gymflow worker` as a subprocess in its own process group."""

    name: ClassVar[str] = "local"
    features: ClassVar[Features] = Features(gpu=True, spot=False, time_limit=False)
    Settings = LocalBackendSpec
    # the end of a phase is noticed within a quarter second; a process starts in seconds
    default_timing: ClassVar[Timing] = Timing(poll_s=0.25, startup_grace_s=120.0, heartbeat_timeout_s=120.0)

    def output_hint(self, handle: Handle, phase: Phase) -> str:
        console = _folder(handle.run_uri) / f"worker-{phase}.out"
        if local_path(handle.run_uri) is not None:
            return str(console)
        return f"{super().output_hint(handle, phase)} (and the console output on this machine: {console})"

    def _check(self, spec: Spec) -> list[Problem]:
        problems = []
        if spec.algorithm.device == "cuda" and not _has_nvidia_gpu():
            problems.append(Problem("algorithm.device", "cuda was asked for, but this machine has no NVIDIA GPU "
                                                        "(no driver found); use auto or cpu, or a GPU backend"))
        return problems

    def _plan(self, spec: Spec) -> Handle:
        path = local_path(spec.storage)
        run_uri = str(path.resolve()) if path is not None else spec.storage.rstrip("/")
        return Handle(backend=self.name, trial_id=spec.trial_id or "", run_uri=run_uri)

    def _provision(self, spec: Spec) -> Handle:
        handle = self._plan(spec)
        _folder(handle.run_uri).mkdir(parents=True, exist_ok=True)
        return handle

    def _setup(self, handle: Handle, spec: Spec) -> None:
        """Start the train worker now, so its start-up (Python, torch, SB3) overlaps the rest of setup;
        it waits until the train phase claims it."""
        run_dir = _folder(handle.run_uri)
        for name in (WAITING_FILE, STANDBY_FILE, _claimed(WAITING_FILE), _claimed(STANDBY_FILE)):
            (run_dir / name).unlink(missing_ok=True)  # left by an earlier run
        reused = self._reuse(handle)
        if reused is not None:
            handle.data["train"] = {"pid": reused, "prestarted": True, "reused": True}
            return
        handle.data["train"] = {"pid": self._spawn(handle, "train", ["--wait", str(PRESTART_WAIT_S)]), "prestarted": True}

    def _pool(self) -> Path:
        return pool.pool_dir(os.getpid(), getattr(self.settings, "torch_threads", None))

    def _reuse(self, handle: Handle) -> int | None:
        """An idle worker of this process (prestarted, or from an earlier trial), handed this run; None when there
        is none. While prestarted workers are still starting up, waits for one rather than start yet another."""
        if not self._reuse_s():
            return None
        folder = self._pool()
        deadline = time.monotonic() + PRESTART_PATIENCE_S
        while True:
            starting = [pid for pid, where in list(_starting.items()) if where == folder and _alive(pid)
                        and not pool.is_idle(folder, pid)]
            for pid in pool.idle_pids(folder):
                if pid in _processes and _alive(pid) and pool.claim(folder, pid, handle.run_uri):
                    _starting.pop(pid, None)
                    _serving[pid] = handle.run_uri
                    (_folder(handle.run_uri) / "worker-train.pid").write_text(str(pid))
                    logger.info("worker train: handed to the idle worker pid %d", pid)
                    return pid
            if not starting or time.monotonic() >= deadline:
                return None
            time.sleep(0.05)  # a worker starts in seconds; a tighter loop only takes CPU from the other trials

    def _reuse_s(self) -> float:
        return float(getattr(self.settings, "reuse_workers_s", None) or 0.0)

    @contextmanager
    def sweep_scope(self, trials: int) -> Iterator[None]:
        """Workers started ahead of the sweep's first trials and kept between its trials; idle ones stop at the end."""
        try:
            self.prestart(trials)
            yield
        finally:
            release_idle_workers()

    def prestart(self, count: int) -> int:
        """Have `count` workers that load torch and SB3 and wait in this process's pool (when workers are reused):
        those started ahead earlier and not yet handed a trial count."""
        reuse = self._reuse_s()
        if reuse <= 0:
            return 0
        folder = self._pool()
        count -= sum(1 for pid, where in list(_starting.items()) if where == folder and _alive(pid))  # started earlier
        for _ in range(count):
            proc = subprocess.Popen(
                [sys.executable, "-m", "gymflow", "worker", "pool", *self._train_options(reuse), "--wait", str(PRESTART_WAIT_S)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=self._env(),
                start_new_session=True,
            )  # its output goes to the run dir of the trial it is handed
            _processes[proc.pid] = proc
            _serving[proc.pid] = ""
            _starting[proc.pid] = folder
        if count > 0:
            logger.info("started %d workers ahead of the trials", count)
        return max(count, 0)

    def _launch(self, handle: Handle, phase: Phase) -> dict[str, Any]:
        run_dir = _folder(handle.run_uri)
        if phase == "train":
            (run_dir / STANDBY_FILE).unlink(missing_ok=True)
            warm = self._claim(handle, WAITING_FILE, CLAIM_PATIENCE_S)
        else:
            warm = self._claim(handle, STANDBY_FILE, 0.0)
        if warm is not None:
            (run_dir / f"worker-{phase}.pid").write_text(str(warm))
            logger.info("worker %s handed to the waiting worker (pid %d)", phase, warm)
            return {"pid": warm, "warm": True}
        if phase == "train":
            self._stop(handle, "train")  # a started worker that did not announce itself in time is not kept
        return {"pid": self._spawn(handle, phase, [])}

    def _spawn(self, handle: Handle, phase: Phase, extra: list[str]) -> int:
        run_dir = _folder(handle.run_uri)
        reuse = self._reuse_s()
        if phase == "train":
            extra = [*extra, *self._train_options(reuse)]
        out = (run_dir / f"worker-{phase}.out").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gymflow", "worker", phase, handle.run_uri, *extra],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(), start_new_session=True,
        )
        out.close()
        _processes[proc.pid] = proc
        _serving.pop(proc.pid, None)  # a pid the system reused after an earlier pooled worker
        _starting.pop(proc.pid, None)
        if "--reuse" in extra:
            _serving[proc.pid] = handle.run_uri
        (run_dir / f"worker-{phase}.pid").write_text(str(proc.pid))  # teardown finds it even without the handle
        logger.info("worker %s started as pid %d", phase, proc.pid)
        return proc.pid

    def _train_options(self, reuse: float) -> list[str]:
        standby = float(getattr(self.settings, "warm_evaluate_s", 0.0))
        if standby <= 0:
            return []
        return ["--standby", str(standby), *(["--reuse", str(reuse)] if reuse > 0 else [])]

    def _env(self) -> dict[str, str]:
        env = {**os.environ, PARENT_ENV: str(os.getpid()), "CI": "true", "PYTHONUNBUFFERED": "1"}
        threads = getattr(self.settings, "torch_threads", None)
        if threads:
            env.update({THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads)})
        return env

    def _claim(self, handle: Handle, marker: str, patience_s: float) -> int | None:
        """The train worker's pid if it waits at `marker` and this call claims it (an atomic rename), else None.

        A worker that is still starting up gets `patience_s` to write its marker."""
        pid = self._pid(handle, "train")
        path = _folder(handle.run_uri) / marker
        deadline = time.monotonic() + patience_s
        while pid is not None and _alive(pid):
            if _marker_pid(path) == pid:
                try:
                    os.rename(path, path.with_name(_claimed(marker)))
                except FileNotFoundError:
                    return None  # it gave up waiting just now
                return pid
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
        return None

    def _pid(self, handle: Handle, phase: Phase) -> int | None:
        entry = handle.data.get(phase)
        if isinstance(entry, dict) and "pid" in entry:
            return int(entry["pid"])
        pid_file = _folder(handle.run_uri) / f"worker-{phase}.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_worker_of(pid, handle.run_uri) else None

    def _poll(self, handle: Handle, phase: Phase) -> WorkerState:
        pid = self._pid(handle, phase)
        if pid is None:
            return WorkerState(running=False, detail="never launched")
        run_dir = _folder(handle.run_uri)
        if phase == "train" and pid in (_marker_pid(run_dir / STANDBY_FILE), _marker_pid(run_dir / _claimed(STANDBY_FILE))):
            return WorkerState(running=False, exit_code=0, detail="trained; standing by for evaluate")
        if not self._serves(pid, handle):
            return WorkerState(running=False, exit_code=0, detail="evaluated; back in the pool for the next trial")
        proc = _processes.get(pid)
        if proc is not None:
            code = proc.poll()
            return WorkerState(running=code is None, exit_code=code)
        return WorkerState(running=_alive(pid), detail="exit code unknown: not a child of this process")

    def _serves(self, pid: int, handle: Handle) -> bool:
        """Whether `pid` still works on this trial: a pooled worker that went back to the pool, or was
        handed another trial since, is not this trial's to wait for or to stop."""
        if pid not in _serving:
            return True
        return _serving[pid] == handle.run_uri and not pool.is_idle(self._pool(), pid)

    def _stop(self, handle: Handle, phase: Phase) -> None:
        pid = self._pid(handle, phase)
        if pid is None or not _alive(pid) or not self._serves(pid, handle):
            return
        logger.info("stopping worker %s (pid %d)", phase, pid)
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            logger.warning("worker %d ignored SIGTERM for %.0f s; killing it", pid, STOP_GRACE_S)
            _signal_group(pid, signal.SIGKILL)
            _reap(pid, 5.0)
        _reap(pid, 0.0)

    def _teardown(self, handle: Handle) -> None:
        for phase in ("train", "evaluate"):
            self._stop(handle, phase)  # type: ignore[arg-type]
        if local_path(handle.run_uri) is None:
            _clear_mirror(_folder(handle.run_uri))


def _clear_mirror(folder: Path) -> None:
    """A bucket's run dir leaves no copies behind on this machine (models and checkpoints are in the bucket); only
    the workers' console output stays, for a post-mortem."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif not (entry.name.startswith("worker-") and entry.name.endswith(".out")):
            entry.unlink(missing_ok=True)


def release_idle_workers() -> int:
    """Stop this process's workers that wait idle for a next trial or are still starting up (a sweep's end)."""
    released = 0
    for pid in list(_starting):
        _starting.pop(pid, None)
        if _alive(pid) and pid in _processes:
            _signal_group(pid, signal.SIGTERM)
            _reap(pid, STOP_GRACE_S)
            _serving.pop(pid, None)
            released += 1
    for folder in pool.pool_dir(os.getpid(), None).parent.glob(f"{os.getpid()}-t*"):
        for pid in pool.idle_pids(folder):
            if pid in _processes and pool.claim(folder, pid, ""):  # an empty run: it will not start anything
                _signal_group(pid, signal.SIGTERM)
                _reap(pid, STOP_GRACE_S)
                _serving.pop(pid, None)
                released += 1
        pool.tidy(folder)
    return released


@lru_cache(maxsize=256)
def _folder(run_uri: str) -> Path:
    """The run dir's local folder: where the worker writes, and this backend keeps pid files and markers."""
    return open_run(run_uri).workdir


def _has_nvidia_gpu() -> bool:
    """An NVIDIA driver is loaded (checked without importing torch, which the orchestrator never needs)."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def _claimed(marker: str) -> str:
    return f"{marker}.claimed"


def _marker_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _reap(pid: int, timeout: float) -> None:
    proc = _processes.get(pid)
    if proc is None:
        return
    try:
        proc.wait(timeout=timeout if timeout > 0 else None) if proc.poll() is None and timeout > 0 else proc.poll()
    except subprocess.TimeoutExpired:
        return
    if proc.returncode is not None:
        _processes.pop(pid, None)
