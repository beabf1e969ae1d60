"""What the phases of one trial share besides the backend and its handle."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)


class TrialContext(BaseModel):
    """Created by setup, passed to the later phases."""

    mlflow_run_id: str
    tracking_uri: str
    flow_run_id: str | None = None
    started_at: float = Field(default_factory=time.time)


_interrupt = threading.Event()


def request_interrupt() -> None:
    """Ask the trial running in this process to stop at its next safe point (`gymflow run`'s Ctrl-C handler)."""
    _interrupt.set()


def interrupt_requested() -> bool:
    return _interrupt.is_set()


def check_interrupt() -> None:
    """Raise KeyboardInterrupt when an interrupt was requested: Ctrl-C takes effect here, in gymflow's own code,
    where the flow handles it, never inside a library's cleanup callback (where Python drops it)."""
    if _interrupt.is_set():
        raise KeyboardInterrupt


class TrialCancelled(Exception):
    """The flow run was cancelled while a worker phase ran; the worker has been stopped."""


def prefect_logger() -> Any:
    """The Prefect run logger inside a run, else this module's logger."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - MissingContextError outside a run
        return logger


def current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def cancel_requested(flow_run_id: str | None) -> bool:
    """Whether the flow run was asked to cancel in the Prefect API."""
    if not flow_run_id:
        return False
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception:  # noqa: BLE001 - a missed check is retried on the next poll
        logger.debug("could not read flow run state", exc_info=True)
        return False
    return state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED)
