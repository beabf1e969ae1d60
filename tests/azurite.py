"""Azurite (npm `azurite`, the last version that runs on Node 20), installed once and started for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect_stack import free_port

VERSION = "3.35.0"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key (published in Azurite's documentation; not a secret)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _installed() -> Path:
    """azurite-blob, installed with npm into a cache folder the first time."""
    folder = Path(os.environ.get("GYMFLOW_AZURITE_DIR") or Path.home() / ".cache" / "gymflow-tests" / f"azurite-{VERSION}")
    binary = folder / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("the az:// tests need Azurite, installed with npm: install Node.js 20 and npm")
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--silent", f"azurite@{VERSION}"],
                       check=True, timeout=600)
    return binary


@contextmanager
def azurite() -> Iterator[str]:
    """A connection string for a fresh in-memory Azurite; stopped at the end."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="azurite-") as work:
        log = open(Path(work) / "azurite.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([str(_installed()), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                                 "--inMemoryPersistence", "--disableTelemetry", "--silent", "--skipApiVersionCheck"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"Azurite did not start: {(Path(work) / 'azurite.log').read_text()}")
                    time.sleep(0.2)
            yield (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                   f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()
