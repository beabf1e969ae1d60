"""A real PostgreSQL for tests: Debian's `postgresql` package, a throwaway cluster on 127.0.0.1.

`.ci/run` installs the package; on a machine without it the tests install it the same way
(apt-get, as root or through passwordless sudo) or say how. PostgreSQL refuses to run as root,
so under root the cluster belongs to the `postgres` user the package creates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect_stack import free_port

USER = "gymflow"
PASSWORD = "s3cret-for-tests"  # a throwaway cluster's password, checked never to be shown
INSTALL = "apt-get install -y --no-install-recommends postgresql"


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    bin: Path

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@{self.host}:{self.port}/{database}"

    def createdb(self, name: str) -> None:
        subprocess.run([str(self.bin / "createdb"), "-h", self.host, "-p", str(self.port), "-U", USER, name],
                       env={**os.environ, "PGPASSWORD": PASSWORD}, check=True, capture_output=True, timeout=60)

    def query(self, database: str, sql: str) -> list[list[str]]:
        done = subprocess.run([str(self.bin / "psql"), "-h", self.host, "-p", str(self.port), "-U", USER, "-d", database,
                               "-At", "-F", "\t", "-c", sql], env={**os.environ, "PGPASSWORD": PASSWORD},
                              check=True, capture_output=True, text=True, timeout=60)
        return [line.split("\t") for line in done.stdout.splitlines() if line]


def _bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def installed() -> Path:
    """The folder of initdb, pg_ctl and friends, installing Debian's package when it is missing."""
    folder = _bin_dir()
    if folder is not None:
        return folder
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if shutil.which("apt-get") is None or (prefix and shutil.which("sudo") is None):
        raise RuntimeError(f"the PostgreSQL tests need Debian's postgresql package: run `{INSTALL}` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run([*prefix, *INSTALL.split()], env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run([*prefix, "apt-get", "update"], env=env, check=True, capture_output=True, timeout=900)
        subprocess.run([*prefix, *INSTALL.split()], env=env, check=True, capture_output=True, timeout=900)
    folder = _bin_dir()
    if folder is None:
        raise RuntimeError(f"`{INSTALL}` left no initdb under /usr/lib/postgresql")
    return folder


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A fresh cluster (user gymflow, password auth) on a free port of 127.0.0.1; stopped and deleted at the end."""
    bin_dir = installed()
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory(prefix="pg-") as work:
        folder = Path(work)
        data, log, pwfile = folder / "data", folder / "postgres.log", folder / "pw"
        pwfile.write_text(PASSWORD)
        if as_owner:
            shutil.chown(folder, "postgres")
            shutil.chown(pwfile, "postgres")
        subprocess.run([*as_owner, str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        port = free_port()
        ctl = [*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
        started = subprocess.run([*ctl, "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off", "start"],
                                 capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {started.stdout}{started.stderr}"
                               f"{log.read_text() if log.exists() else ''}")
        try:
            yield Postgres("127.0.0.1", port, bin_dir)
        finally:
            subprocess.run([*ctl, "-m", "fast", "stop"], capture_output=True, timeout=120)
