"""The worker's agent on a machine the orchestrator cannot reach (a cloud VM): phases are handed over through the
run directory, never over SSH.

The orchestrator writes ``agent/launch-N.json`` (``{"phase": "train"}``) to start phase N and
``agent/stop-N.json`` to stop it; the agent, started once on the machine (``gymflow worker agent RUN_URI``),
runs ``gymflow worker PHASE RUN_URI`` for each launch in turn and reports in ``agent/state-N.json``:
``running`` with the worker's pid, then ``exited`` with its exit code (negative: the signal that ended it).
Launches are numbered from 1 and taken in order, so a request is never run twice, even by an agent that
restarts (it goes on after the last launch it reported). The worker's console output goes to
``worker-PHASE.out`` in the run dir.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from gymflow.storage import RunStore

logger = logging.getLogger(__name__)

FOLDER = "agent"
STOP_GRACE_S = 30.0  # SIGTERM, then this long to checkpoint, then SIGKILL


class PhaseState(BaseModel):
    """What the agent says of launch N."""

    seq: int
    phase: str
    state: Literal["running", "exited"]
    pid: int | None = None
    exit_code: int | None = None
    host: str = ""
    at: float = 0.0


def _launch(seq: int) -> str:
    return f"{FOLDER}/launch-{seq}.json"


def _stop(seq: int) -> str:
    return f"{FOLDER}/stop-{seq}.json"


def _state(seq: int) -> str:
    return f"{FOLDER}/state-{seq}.json"


# -- the orchestrator's side ------------------------------------------------------------------
def request_launch(store: RunStore, seq: int, phase: str) -> None:
    """Ask the agent to run phase as launch `seq` (create-only: a launch is requested once)."""
    import json

    if not store.create_bytes(_launch(seq), json.dumps({"phase": phase, "at": time.time()}).encode()):
        raise FileExistsError(f"launch {seq} was already requested in {store.uri}")


def request_stop(store: RunStore, seq: int) -> None:
    """Ask the agent to stop launch `seq` (it gets SIGTERM, checkpoints and exits); idempotent."""
    store.write_json(_stop(seq), {"at": time.time()})


def phase_state(store: RunStore, seq: int) -> PhaseState | None:
    """What the agent reported of launch `seq`; None before it took it up."""
    try:
        return PhaseState.model_validate(store.read_json(_state(seq)))
    except FileNotFoundError:
        return None


def next_seq(store: RunStore) -> int:
    """The number the next launch takes: one after the highest requested so far."""
    found = (re.fullmatch(rf"{FOLDER}/launch-(\d+)\.json", name) for name in store.list(f"{FOLDER}/"))
    return max((int(m[1]) for m in found if m), default=0) + 1


# -- the machine's side ---------------------------------------------------------------------------
def serve(store: RunStore, poll_s: float = 2.0, idle_exit_s: float | None = None) -> None:
    """Run each requested launch in turn until idle for `idle_exit_s` (None: until the machine is deleted)."""
    seq = _first_unreported(store)
    idle_since = time.monotonic()
    logger.info("agent serving %s from launch %d", store.uri, seq)
    while True:
        request = _read(store, _launch(seq))
        if request is None:
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                logger.info("agent: no launch for %.0f s; exiting", idle_exit_s)
                return
            time.sleep(poll_s)
            continue
        _run(store, seq, str(request["phase"]), poll_s)
        seq += 1
        idle_since = time.monotonic()


def _first_unreported(store: RunStore) -> int:
    """After a restart: the launch after the last one this run dir has a final report of. A launch reported as
    running by an agent that is gone is reported again, as ended by the loss of the machine's agent."""
    seq = 1
    while True:
        state = phase_state(store, seq)
        if state is None:
            return seq
        if state.state == "running":
            _report(store, state.model_copy(update={"state": "exited", "exit_code": -int(signal.SIGKILL)}))
        seq += 1


def _read(store: RunStore, rel: str) -> dict[str, Any] | None:
    try:
        value = store.read_json(rel)
    except FileNotFoundError:
        return None
    return value if isinstance(value, dict) else None


def _report(store: RunStore, state: PhaseState) -> None:
    store.write_json(_state(state.seq), state.model_dump(mode="json") | {"at": time.time()})


def _run(store: RunStore, seq: int, phase: str, poll_s: float) -> None:
    """One launch: the worker phase as a child process, stopped when asked; its end reported."""
    folder = store.workdir
    folder.mkdir(parents=True, exist_ok=True)
    out = Path(folder) / f"worker-{phase}.out"
    with out.open("ab") as console:
        proc = subprocess.Popen([sys.executable, "-m", "gymflow", "worker", phase, store.uri], stdout=console,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    host = os.uname().nodename
    _report(store, PhaseState(seq=seq, phase=phase, state="running", pid=proc.pid, host=host))
    logger.info("launch %d: worker %s started (pid %d)", seq, phase, proc.pid)
    stopping_since: float | None = None
    while proc.poll() is None:
        if stopping_since is None and store.exists(_stop(seq)):
            logger.info("launch %d: stop requested; SIGTERM to the worker", seq)
            _signal(proc.pid, signal.SIGTERM)
            stopping_since = time.monotonic()
        elif stopping_since is not None and time.monotonic() - stopping_since > STOP_GRACE_S:
            _signal(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            pass
    store.publish(out.name)
    _report(store, PhaseState(seq=seq, phase=phase, state="exited", pid=proc.pid, exit_code=proc.returncode, host=host))
    logger.info("launch %d: worker %s exited with code %d", seq, phase, proc.returncode)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the worker leads its own session: this reaches its children too
    except ProcessLookupError:
        pass
