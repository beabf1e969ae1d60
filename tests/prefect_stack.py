"""A real Prefect stack for deployment tests: `prefect server start`, a process work pool, a worker.

Used by tests/test_deployments.py and by docs/screenshot.py. Everything listens on 127.0.0.1
and keeps its state in one folder.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POOL = "gymflow-local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    folder: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the `prefect` CLI against this server, from the repository root."""
        return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def gymflow(self, *args: str, timeout: float = 600, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
        """`gymflow ARGS` against this server, to its end; `env`: more environment (a cloud's stand-ins)."""
        return subprocess.run([sys.executable, "-m", "gymflow", *args], cwd=ROOT, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def start_gymflow(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """`gymflow ARGS` against this server, running; its output (stdout and stderr) in one pipe."""
        return subprocess.Popen([sys.executable, "-m", "gymflow", *args], cwd=ROOT, env={**self.env, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def start_server(self) -> None:
        """`prefect server start` on this stack's port and state; returns once it answers."""
        port = self.url.rsplit(":", 1)[1]
        log = (self.folder / "server.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.insert(0, proc)
        deadline = time.monotonic() + 120
        while not _healthy(self.url):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"prefect server did not start; see {self.folder / 'server.log'}")
            time.sleep(0.2)

    def stop_server(self) -> None:
        """Stop the server as a restart would (SIGTERM); its database stays."""
        proc = self.procs.pop(0)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart_at_each(self, proc: subprocess.Popen[str], markers: Path, phases: list[str]) -> str:
        """Restart the server in each phase of proc's run, paused there by tests/fault_backends.py (pause@PHASES):
        once `fault-paused-PHASE` is in markers, stop the server, let the phase go on while it is down, start it
        again on the same database. Returns the run's output; kills the run if anything goes wrong."""
        try:
            for phase in phases:
                deadline = time.monotonic() + 300
                while not (markers / f"fault-paused-{phase}").exists():
                    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                    assert time.monotonic() < deadline, f"the run never reached {phase}"
                    time.sleep(0.1)
                self.stop_server()
                (markers / f"fault-resume-{phase}").touch()
                time.sleep(2)
                self.start_server()
            return proc.communicate(timeout=600)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
            if not self.procs or self.procs[0].poll() is not None:
                self.start_server()

    def start_worker(self) -> None:
        log = (self.folder / "worker.log").open("ab")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
                                            "--type", "process"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT))


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextmanager
def prefect_stack(folder: Path, scheduler_loop_s: int = 2, pool: bool = True) -> Iterator[Stack]:
    """A Prefect server with its services (scheduler, triggers, actions) and, with `pool`, a process work pool."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(folder / "prefect-home"), "PREFECT_API_URL": f"{url}/api",
           "PREFECT_UI_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(scheduler_loop_s),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_HEARTBEAT_SECONDS": "5", "CI": "true"}
    folder.mkdir(parents=True, exist_ok=True)
    stack = Stack(url, env, folder)
    try:
        stack.start_server()
        created = stack.prefect("work-pool", "create", POOL, "--type", "process", "--overwrite") if pool else None
        if created is not None and created.returncode != 0:
            raise RuntimeError(f"work pool: {created.stdout}{created.stderr}")
        yield stack
    finally:
        for proc in reversed(stack.procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
