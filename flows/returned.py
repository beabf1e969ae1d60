"""A flow's return value, even when its final state came back from the API without it.

Results are not persisted, so a final state carries the value only as this process set it. When the API call that
set it timed out and its retry handed back the server's copy (as when the server's SQLite database stays locked
past the client's timeout), the value is taken from what the flow returned in this process instead.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from prefect.exceptions import MissingResult

logger = logging.getLogger(__name__)

T = TypeVar("T")
_RETURNED: dict[str, Any] = {}  # flow run id -> return value, until `result_of` asks for it
_KEEP = 64  # at most, for processes that never ask (a deployment's flow runs)


def keep(value: T) -> T:
    """Inside a flow: remember its return value for `result_of`, and return it."""
    from prefect.runtime import flow_run

    while len(_RETURNED) >= _KEEP:
        _RETURNED.pop(next(iter(_RETURNED)))
    _RETURNED[str(flow_run.id)] = value
    return value


def result_of(state: Any) -> Any:
    """The flow's return value, or its exception, from its final state."""
    flow_run_id = str(state.state_details.flow_run_id)
    try:
        return state.result(raise_on_failure=False)
    except MissingResult:
        if not state.is_completed() or flow_run_id not in _RETURNED:
            raise
        logger.warning("the final state of flow run %s came back from the API without its result; using the value "
                       "the flow returned in this process", flow_run_id)
        return _RETURNED[flow_run_id]
    finally:
        _RETURNED.pop(flow_run_id, None)
