"""Task-run records survive a Prefect server that dies holding them (flows/outages.py).

Task runs are recorded by the server from the event stream. An event the server has acknowledged but not yet
written (its task-run recorder keeps a queue in memory; on SQLite a write can wait seconds for the lock) dies with
the server. Here the first server is made to hold task-run events (a long recorder batch) and is SIGKILLed; Prefect's
own events client then leaves a hole in the record, gymflow's replays the events and the record is whole.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from flows import outages
from prefect_stack import Stack, prefect_stack

pytestmark = pytest.mark.slow

HOLDING = {"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "1000",
           "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "600"}


def _event(task_run_id: uuid.UUID, state: str) -> Any:
    """A task-run state event as Prefect's task engine emits it (client-side orchestration)."""
    from prefect.events.schemas.events import Event

    state_id = uuid.uuid4()
    return Event(id=state_id, occurred=datetime.now(timezone.utc), event=f"prefect.task-run.{state.capitalize()}",
                 resource={"prefect.resource.id": f"prefect.task-run.{task_run_id}", "prefect.resource.name": "train",
                           "prefect.state-name": state.capitalize(), "prefect.state-type": state.upper(),
                           "prefect.orchestration": "client"},
                 payload={"validated_state": {"type": state.upper(), "name": state.capitalize(), "state_details": {}},
                          "task_run": {"name": "train", "task_key": "phases.train", "dynamic_key": str(task_run_id)}})


def _kill_server(stack: Stack) -> None:
    proc = stack.procs.pop(0)
    proc.kill()
    proc.wait()
    port = int(stack.url.rsplit(":", 1)[1])
    for _ in range(100):  # the port is free once the server is really gone
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)


def _restart_holding(stack: Stack) -> None:
    stack.stop_server()
    stack.env.update(HOLDING)
    stack.start_server()
    for name in HOLDING:  # the next start is an ordinary server
        del stack.env[name]


async def _through_a_crash(stack: Stack, task_run_id: uuid.UUID) -> list[str]:
    """Running is sent and acknowledged, the server is SIGKILLed holding it and started again, Completed is sent:
    returns the states the new server recorded."""
    from prefect.client.orchestration import get_client
    from prefect.events.clients import PrefectEventsClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async with PrefectEventsClient(api_url=stack.api_url, reconnection_attempts=60, checkpoint_every=1) as client:
        await client.emit(_event(task_run_id, "running"))  # checkpoint_every=1: the server acknowledged it
        await asyncio.sleep(1)
        await asyncio.to_thread(_kill_server, stack)
        await asyncio.to_thread(stack.start_server)
        await client.emit(_event(task_run_id, "completed"))
    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
        async with get_client() as api:
            for _ in range(100):
                states = await api.read_task_run_states(task_run_id)
                names = [s.name for s in sorted(states, key=lambda s: s.timestamp)]
                if "Completed" in names:
                    return names
                await asyncio.sleep(0.2)
    return names


def test_task_run_events_a_killed_server_held_are_sent_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.events.clients import PrefectEventsClient

    for name in ("_emit", "_reconnect"):  # whatever patient_events() does to the client class is undone afterwards
        monkeypatch.setattr(PrefectEventsClient, name, getattr(PrefectEventsClient, name))
    monkeypatch.setattr(outages, "_installed", outages._installed)
    outages._install_replay()
    with prefect_stack(tmp_path, pool=False) as stack:
        monkeypatch.setattr(outages, "REPLAY", False)  # Prefect's own behaviour: the acknowledged event is lost
        _restart_holding(stack)
        assert asyncio.run(_through_a_crash(stack, uuid.uuid4())) == ["Completed"]
        monkeypatch.setattr(outages, "REPLAY", True)
        _restart_holding(stack)
        assert asyncio.run(_through_a_crash(stack, uuid.uuid4())) == ["Running", "Completed"]
