"""Riding out a Prefect server restart: the event stream waits for the server as long as the API calls do,
and the task-run records it carried are sent again once the server is back.

The flow run states a trial writes through Prefect's REST client are retried for about a minute
when the server is unreachable (five retries, doubling from 2 s). Task runs, though, are recorded by
the server from the *event stream* (a websocket), and Prefect's events client gives up reconnecting
after ten attempts, about 8 s: a restart that takes longer (a server starts in ~10 s here) dropped the
record of the phase that was running. With this the client keeps trying through a restart.

A longer wait alone was not enough: events that had reached the server just before it stopped are
lost with its in-memory event queue (in CI one run of tests/test_fault_table.py had no task run for
provision and setup after restarts in those phases, while the flow run's own states, written through
the REST API, were all there). So the client keeps the task-run state events it sent in the last
`REPLAY_WINDOW_S` seconds and sends them again whenever it reconnects (Prefect itself resends only
the events the server has not acknowledged). That is safe because the server records them
idempotently: a state is stored under its event's id (a repeat is ignored), and a task run is
updated only by a state newer than the one it has.

Prefect only sends events through its own client classes (`emit_event` checks the worker's client
type exactly: a subclass's events are dropped), so the replay wraps two methods of
`PrefectEventsClient` in this process, as flows/api_writes.py wraps the REST client's send.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from typing import Any

logger = logging.getLogger(__name__)

RECONNECT_ATTEMPTS = 60  # after the first three, one a second: about a minute, as the REST client's retries
REPLAY_WINDOW_S = 180.0  # a server writes task-run events within seconds; this covers a slow stop and start
TASK_RUN_EVENTS = "prefect.task-run."
REPLAY = True  # whether a reconnected client sends recent task-run events again (tests turn it off to see the hole)
_installed = False


class _Recent:
    """The task-run events one client sent in the last REPLAY_WINDOW_S seconds, oldest first."""

    def __init__(self) -> None:
        self.events: deque[tuple[float, Any]] = deque()
        self.ids: set[Any] = set()
        self.connected = False

    def add(self, event: Any) -> None:
        if event.event.startswith(TASK_RUN_EVENTS) and event.id not in self.ids:
            self.forget_old()
            self.events.append((time.monotonic(), event))
            self.ids.add(event.id)

    def forget_old(self) -> None:
        horizon = time.monotonic() - REPLAY_WINDOW_S
        while self.events and self.events[0][0] < horizon:
            self.ids.discard(self.events.popleft()[1].id)

    def replay(self, unconfirmed: list[Any]) -> list[Any]:
        """What to resend after a reconnection: these events, then the unconfirmed ones not among them."""
        self.forget_old()
        pending = {event.id for event in unconfirmed}
        again = [event for _, event in self.events if event.id not in pending]
        if again:
            logger.debug("event stream reconnecting: sending %d recent task-run events again", len(again))
        return again + unconfirmed


def _recent(client: Any) -> _Recent:
    recent = client.__dict__.get("_gymflow_recent")
    if recent is None:
        recent = client.__dict__["_gymflow_recent"] = _Recent()
    return recent


def _install_replay() -> None:
    global _installed
    if _installed:
        return
    from prefect.events.clients import PrefectEventsClient

    emit, reconnect = PrefectEventsClient._emit, PrefectEventsClient._reconnect

    @functools.wraps(emit)
    async def remembering_emit(self: Any, event: Any) -> None:
        if REPLAY:
            _recent(self).add(event)
        await emit(self, event)

    @functools.wraps(reconnect)
    async def replaying_reconnect(self: Any) -> None:
        recent = _recent(self)
        if REPLAY and recent.connected:  # not the first connection: the server may have lost what it was sent
            self._unconfirmed_events = recent.replay(self._unconfirmed_events)
        await reconnect(self)
        recent.connected = True

    PrefectEventsClient._emit = remembering_emit  # type: ignore[method-assign]
    PrefectEventsClient._reconnect = replaying_reconnect  # type: ignore[method-assign]
    _installed = True


def patient_events() -> None:
    """Make this process's events client reconnect for about a minute and send recent task-run events again after
    a reconnection (self-hosted servers; Prefect Cloud and a client someone else chose are left alone).
    Call before the flow runs."""
    from prefect.events.clients import PrefectEventsClient
    from prefect.events.worker import EventsWorker, emit_events_to_cloud, should_emit_events_to_running_server

    if EventsWorker._client_override is not None or emit_events_to_cloud() or not should_emit_events_to_running_server():
        return
    _install_replay()
    EventsWorker.set_client_override(PrefectEventsClient, reconnection_attempts=RECONNECT_ATTEMPTS)
    logger.debug("Prefect events client: %d reconnection attempts, task-run events replayed after a reconnection",
                 RECONNECT_ATTEMPTS)
