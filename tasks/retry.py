"""Retry only what a retry can fix: 429s, 5xx, timeouts, dropped connections. Never bad config."""

from __future__ import annotations

import logging
from typing import Any

from backends.base import BackendError, TransientBackendError
from gymflow.errors import UserError

logger = logging.getLogger(__name__)

RETRY_DELAYS = [2, 5, 15]
_TRANSIENT_NAMES = {
    "ServiceUnavailable", "TooManyRequests", "InternalServerError", "GatewayTimeout", "BadGateway",
    "DeadlineExceeded", "RetryError", "ServiceRequestError", "ServiceResponseError", "ConnectTimeout",
    "ReadTimeout", "ConnectError", "RemoteProtocolError",
}


def _status_code(exc: BaseException) -> int | None:
    for attr in ("code", "status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    getter = getattr(exc, "get_http_status_code", None)  # mlflow's RestException
    if callable(getter):
        try:
            return int(getter())
        except (TypeError, ValueError):
            return None
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the operation that raised exc may succeed."""
    if isinstance(exc, TransientBackendError):
        return True
    if isinstance(exc, (UserError, BackendError)):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    code = _status_code(exc)
    if code is not None and (code == 429 or 500 <= code < 600):
        return True
    return type(exc).__name__ in _TRANSIENT_NAMES


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: continue to the retry policy only for transient errors."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - inspecting the failure
        transient = is_transient(exc)
        logger.info("%s failed with %s: %s", task_run.name, type(exc).__name__, "retrying" if transient else "not retrying")
        return transient
    return False
