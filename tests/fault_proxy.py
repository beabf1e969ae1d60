"""An HTTP proxy between a storage client and its emulator that injects faults: 503 answers, connections dropped
before or after the emulator saw the request, and requests held (never answered) while their URL matches a
pattern. The clients under test speak to it exactly as to the service; nothing is mocked."""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Faults:
    """What the proxy does to the requests it sees, counted from 1."""

    fail_first: int = 0  # answer 503 to the first N requests
    every_503: int = 0  # then answer 503 to every Nth request
    every_drop: int = 0  # close the connection without an answer on every Nth request (the emulator never sees it)
    every_drop_after: int = 0  # forward every Nth request, then close without passing on the answer
    deny_writes: bool = False  # answer writes (POST, PUT, PATCH, DELETE) as GCS does a caller without the permission
    limit: int | None = None  # inject at most this many faults in all (each one costs the client a backoff)
    hold: re.Pattern[str] | None = None  # requests whose URL or body matches wait until released (an upload cut midway)
    seen: int = 0
    injected: int = 0
    held: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = ""
    faults = Faults()

    def _handle(self) -> None:
        faults = self.faults
        with faults.lock:
            faults.seen += 1
            n = faults.seen
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if faults.hold is not None and faults.hold.search(self.path + "\n" + body.decode("latin-1")):
            with faults.lock:
                faults.held += 1
            faults.release.wait()
            self._drop()
            return
        if faults.deny_writes and self.command in ("POST", "PUT", "PATCH", "DELETE"):
            self._count()
            denied = (b'{"error": {"code": 403, "message": "anonymous caller does not have storage.objects.create access", '
                      b'"errors": [{"reason": "forbidden", "message": "permission denied"}]}}')
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(denied)))
            self.end_headers()
            self.wfile.write(denied)
            return
        if faults.limit is not None and faults.injected >= faults.limit:
            n = 0  # the network has healed
        if n and (n <= faults.fail_first or (faults.every_503 and n % faults.every_503 == 0)):
            self._count()
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if n and faults.every_drop and n % faults.every_drop == 0:
            self._count()
            self._drop()
            return
        status, headers, data = self._forward(body)
        if n and faults.every_drop_after and n % faults.every_drop_after == 0:
            self._count()
            self._drop()
            return
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _count(self) -> None:
        with self.faults.lock:
            self.faults.injected += 1

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        host, port = self.upstream.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            answer = conn.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            conn.close()

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def fault_proxy(upstream: str, faults: Faults) -> Iterator[str]:
    """A proxy to upstream (http://host:port) applying faults; yields its URL."""
    handler = type("Handler", (_Handler,), {"upstream": upstream.rstrip("/"), "faults": faults})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        faults.release.set()
        server.shutdown()
        server.server_close()


def upstream_of(bucket: str, environ: dict[str, str]) -> str:
    """The emulator's address for a bucket URI, from the variables that point the clients at it."""
    if bucket.startswith("gs://"):
        return environ["STORAGE_EMULATOR_HOST"]
    found = re.search(r"BlobEndpoint=(http://[^/;]+)", environ["AZURE_STORAGE_CONNECTION_STRING"])
    assert found is not None
    return found[1]


def via(bucket: str, environ: dict[str, str], proxy: str) -> dict[str, str]:
    """The variables that point the clients at the proxy instead."""
    upstream = upstream_of(bucket, environ)
    if bucket.startswith("gs://"):
        return {"STORAGE_EMULATOR_HOST": proxy}
    return {"AZURE_STORAGE_CONNECTION_STRING": environ["AZURE_STORAGE_CONNECTION_STRING"].replace(upstream, proxy)}
