"""One Prefect API write at a time from this process: what keeps a sweep's trials in parallel on SQLite.

Measured on the SQLite-backed Prefect server (Prefect's default and gymflow's background server):
when two trial flows of one process write at the same moment (one creates its flow run while the
other sets a state or creates an artifact), the server's SQLite write lock makes one request wait
for seconds — up to its 60 s busy timeout — so a trial's start waits for another trial to end
and the sweep runs one trial at a time. Sending this process's write requests one after another
(each takes milliseconds) removed those waits: in 14 sweeps of 6 short trials every one ran two
trials at once, against about one in three running them one at a time before, and no request
took longer than 2 s (one had taken 62 s).

Reads go through as they are, and so do the log and event streams (they are sent in batches by
Prefect's own background workers). On a PostgreSQL server the lock costs nothing measurable: a
write takes a few milliseconds. ``GYMFLOW_SERIAL_API_WRITES=0`` turns it off.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

ENV = "GYMFLOW_SERIAL_API_WRITES"
_lock = threading.Lock()
_installed = False


def install() -> None:
    """Wrap the sync Prefect client's send so that this process's non-GET requests are sent one at a time."""
    global _installed
    if _installed or os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no"):
        return
    from prefect.client.base import PrefectHttpxSyncClient

    send = PrefectHttpxSyncClient.send

    @functools.wraps(send)
    def serial_send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return send(self, request, *args, **kwargs)
        with _lock:
            return send(self, request, *args, **kwargs)

    PrefectHttpxSyncClient.send = serial_send  # type: ignore[method-assign]
    _installed = True
