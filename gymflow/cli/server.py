"""A local Prefect server that gymflow starts once in the background and reuses.

Prefect with no server configured starts a temporary one inside every process, which
costs 10-20 s per `gymflow run`. Instead the first run starts `prefect server start`
on 127.0.0.1 in the background (state in ~/.gymflow/server.json) and later runs reuse
it: they only pay the flow's own start-up, and the UI keeps every run's history.
`PREFECT_API_URL` (or a Prefect profile) pointing elsewhere always wins, and
`GYMFLOW_EPHEMERAL=1` falls back to Prefect's temporary server. The server keeps its runs in
Prefect's SQLite file, or in PostgreSQL once `gymflow server start --database URL` chose it
(gymflow/cli/database.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gymflow.cli import database
from gymflow.cli.database import Database
from gymflow.errors import GymflowError, UserError
from gymflow.paths import home
from gymflow.procs import pid_alive

logger = logging.getLogger(__name__)

DEFAULT_PORT = 4200
START_TIMEOUT_S = 90.0
BUSY_PATIENCE_S = 30.0


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    url: str
    log: str
    database: Database = Database(None)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def _state_file() -> Path:
    return home() / "server.json"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def status() -> ServerInfo | None:
    """The running background server, or None (a stale state file is removed)."""
    try:
        data = json.loads(_state_file().read_text())
        info = ServerInfo(int(data["pid"]), str(data["url"]), str(data.get("log", "")), Database(data.get("database")))
    except (OSError, ValueError, KeyError):
        return None
    if not pid_alive(info.pid):
        _state_file().unlink(missing_ok=True)
        return None
    # alive: a busy server (a sweep's workers loading torch on every core) may take seconds to answer, and starting a
    # second server beside it would split the runs over two servers
    deadline = time.monotonic() + BUSY_PATIENCE_S
    while not healthy(info.url, timeout=5.0):
        if not pid_alive(info.pid):
            _state_file().unlink(missing_ok=True)
            return None
        if time.monotonic() > deadline:
            raise GymflowError(f"the background Prefect server (pid {info.pid}) runs but has not answered at {info.url} "
                               f"for {BUSY_PATIENCE_S:.0f} s; see {info.log}, or stop it with `gymflow server stop`")
        time.sleep(0.5)
    return info


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise GymflowError("no free port for the Prefect server")


def start(port: int = DEFAULT_PORT, db: Database | None = None) -> ServerInfo:
    """Start the background server (or return the one running) and wait until it answers.

    `db` is the database asked for with `--database` (checked, then remembered); None keeps the one
    remembered. A running server on another database is never silently swapped: stop it first.
    """
    running = status()
    if running is not None:
        if db is not None and db != running.database:
            raise UserError(f"--database: the background Prefect server already runs at {running.url} on "
                            f"{running.database.shown()}; stop it first (`gymflow server stop`), then start it again "
                            f"with --database")
        return running
    if db is not None:
        database.check(db)
        database.save(db)
    db = database.saved()
    home().mkdir(parents=True, exist_ok=True)
    port = _free_port(port)
    url = f"http://127.0.0.1:{port}"
    log = home() / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_URL": url,  # links in alerts
                 **db.env()},
        )
    info = ServerInfo(proc.pid, url, str(log), db)
    state = {"pid": info.pid, "url": url, "log": str(log), "started_at": time.time(), "database": db.url}
    database.write_private(_state_file(), json.dumps(state))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if healthy(url):
            logger.info("Prefect server started at %s (pid %d) on %s", url, proc.pid, db.shown())
            return info
        if proc.poll() is not None:
            _state_file().unlink(missing_ok=True)
            raise GymflowError(f"the Prefect server exited with code {proc.returncode}; see {log}")
        time.sleep(0.5)
    stop()
    raise GymflowError(f"the Prefect server did not answer within {START_TIMEOUT_S:.0f} s; see {log}")


def stop() -> bool:
    """Stop the background server; False when none was running."""
    try:
        pid = int(json.loads(_state_file().read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 20
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    _state_file().unlink(missing_ok=True)
    return True


def dialect_of(api_url: str) -> str | None:
    """The database ("postgresql" or "sqlite") under the server at this API when it is gymflow's background
    server; None for any other server (Prefect's API does not say)."""
    running = status()
    if running is None or running.api_url.rstrip("/") != api_url.rstrip("/"):
        return None
    return running.database.dialect


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile, if any."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def ensure_api() -> str | None:
    """The Prefect API this process should use, starting the background server when needed.

    Returns None in ephemeral mode (GYMFLOW_EPHEMERAL=1), where Prefect runs its own
    temporary server in-process.
    """
    url = configured_api_url()
    if url:
        return url
    if os.environ.get("GYMFLOW_EPHEMERAL", "").lower() in ("1", "true", "yes"):
        return None
    return start().api_url
