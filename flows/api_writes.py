"""The Prefect API writes of a process that runs many trials: one at a time, and a locked database retried at once.

What kept a sweep's trials from running in parallel on the SQLite-backed Prefect server (Prefect's
default and gymflow's background server), found by dumping the threads of sweeps that ran their
trials one at a time: the server runs every write in a transaction that only becomes a write at
its first INSERT/UPDATE, and in WAL mode SQLite refuses that upgrade at once (SQLITE_BUSY_SNAPSHOT)
when another write committed in between. The server answers such a request 503, and Prefect's
client waits 2, 4, 8... seconds (exponential back-off) before each new attempt. While another trial
of the process writes steadily (its task runs, states, artifacts), each attempt can lose again:
the subflow-tracking task run that starts a trial flow (created from Prefect's async client) was
seen waiting 13 s — until every other trial had finished — so the sweep ran one trial at a time.

So in such a process (the sweep's, whose trials' flows run in its threads):

- non-GET requests of both Prefect clients (sync and async) are sent one at a time (each takes
  milliseconds), so the process's own writes no longer conflict with each other;
- a 503 answer to a write is retried right away, at 0.05 s to 1 s intervals for up to FAST_RETRY_S
  in all, before Prefect's own back-off takes over (what is left of the conflict is with the
  server's own background writers, which commit in milliseconds).

Reads and the log and event streams go through as they are. On a PostgreSQL server this costs nothing
measurable (a write takes a few milliseconds; no 503s). ``GYMFLOW_SERIAL_API_WRITES=0`` turns it off.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

ENV = "GYMFLOW_SERIAL_API_WRITES"
READS = frozenset({"GET", "HEAD", "OPTIONS"})
DELAYS_S = (0.05, 0.1, 0.1, 0.2, 0.2, 0.3, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0)
FAST_RETRY_S = sum(DELAYS_S)
_lock = threading.Lock()
_installed = False


def install() -> None:
    """Wrap both Prefect clients' sending so that this process's writes go one at a time, a 503 retried at once."""
    global _installed
    if _installed or os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no"):
        return
    from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient

    sync_send = PrefectHttpxSyncClient._send_with_retry
    async_send = PrefectHttpxAsyncClient._send_with_retry

    @functools.wraps(sync_send)
    def sync_serial(self: Any, request: Any, send: Any, *args: Any, **kwargs: Any) -> Any:
        if request.method in READS:
            return sync_send(self, request, send, *args, **kwargs)

        def attempt(req: Any, *a: Any, **kw: Any) -> Any:
            with _lock:
                return send(req, *a, **kw)

        def one_at_a_time(req: Any, *a: Any, **kw: Any) -> Any:
            for delay in DELAYS_S:
                response = attempt(req, *a, **kw)
                if response.status_code != 503:
                    return response
                logger.debug("%s %s: 503 from the Prefect API; again in %.2f s", req.method, req.url.path, delay)
                response.close()
                time.sleep(delay)
            return attempt(req, *a, **kw)  # Prefect's own back-off takes it from here

        return sync_send(self, request, one_at_a_time, *args, **kwargs)

    @functools.wraps(async_send)
    async def async_serial(self: Any, request: Any, send: Any, *args: Any, **kwargs: Any) -> Any:
        import anyio

        if request.method in READS:
            return await async_send(self, request, send, *args, **kwargs)

        async def attempt(req: Any, *a: Any, **kw: Any) -> Any:
            while not _lock.acquire(blocking=False):  # never block the event loop, and stay cancellable
                await anyio.sleep(0.002)
            try:
                return await send(req, *a, **kw)
            finally:
                _lock.release()

        async def one_at_a_time(req: Any, *a: Any, **kw: Any) -> Any:
            for delay in DELAYS_S:
                response = await attempt(req, *a, **kw)
                if response.status_code != 503:
                    return response
                logger.debug("%s %s: 503 from the Prefect API; again in %.2f s", req.method, req.url.path, delay)
                await response.aclose()
                await anyio.sleep(delay)
            return await attempt(req, *a, **kw)

        return await async_send(self, request, one_at_a_time, *args, **kwargs)

    PrefectHttpxSyncClient._send_with_retry = sync_serial  # type: ignore[method-assign]
    PrefectHttpxAsyncClient._send_with_retry = async_serial  # type: ignore[method-assign]
    _installed = True
