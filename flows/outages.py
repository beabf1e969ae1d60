"""Riding out a Prefect server restart: the event stream waits for the server as long as the API calls do.

The flow run states a trial writes through Prefect's REST client are retried for about a minute
when the server is unreachable (five retries, doubling from 2 s). Task runs, though, are recorded by
the server from the *event stream* (a websocket), and Prefect's events client gives up reconnecting
after ten attempts, about 8 s: a restart that takes longer (a server starts in ~10 s here) dropped the
record of the phase that was running. With this the client keeps trying through a restart; events that
had reached the server just as it was stopped can still be lost (its event queue is in memory): in CI one
run of tests/test_fault_table.py had no task run for provision and setup after restarts in those phases,
while the flow run's own states, written through the REST API, were all there.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

RECONNECT_ATTEMPTS = 60  # after the first three, one a second: about a minute, as the REST client's retries


def patient_events() -> None:
    """Make this process's events client reconnect for about a minute (self-hosted servers; Prefect Cloud and
    a client someone else chose are left alone). Call before the flow runs."""
    from prefect.events.clients import PrefectEventsClient
    from prefect.events.worker import EventsWorker, emit_events_to_cloud, should_emit_events_to_running_server

    if EventsWorker._client_override is not None or emit_events_to_cloud() or not should_emit_events_to_running_server():
        return
    EventsWorker.set_client_override(PrefectEventsClient, reconnection_attempts=RECONNECT_ATTEMPTS)
    logger.debug("Prefect events client: %d reconnection attempts", RECONNECT_ATTEMPTS)
