"""One owner per run directory: a lease in ``owner.json``, and the check that a run dir holds this trial.

The orchestrator running a trial (``gymflow run``, a deployment's flow run, a sweep's trial) takes the
lease before it provisions anything, with a create-only write (local: an exclusive link; gs://:
``ifGenerationMatch=0``; az://: ``If-None-Match: *``), so of two runs started together exactly one
gets it. The owner renews it every quarter of the lease time (``GYMFLOW_LEASE_TTL_S``, default 60 s)
with a compare-and-swap on the version it last wrote, and marks it released after teardown. Another
run takes it over only when it is stale:

- released: the previous owner finished (any outcome) and let go;
- dead: the owner ran on this machine and its process is gone (judged at once: a rerun after a kill
  need not wait for the lease time);
- expired: the owner runs elsewhere and has not renewed within the lease time (judged on its own
  clock's timestamps, so machines' clocks must agree to within a fraction of the lease time).

Taking over is a compare-and-swap too, so two runs that find the same stale lease cannot both win.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from gymflow.errors import Problem, UserError
from gymflow.paths import seconds
from gymflow.procs import pid_alive
from gymflow.spec import Spec
from gymflow.storage import RunStore

logger = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
TTL_ENV = "GYMFLOW_LEASE_TTL_S"
DEFAULT_TTL_S = 60.0
_ATTEMPTS = 5

Standing = Literal["live", "released", "dead", "expired"]


class RunDirBusy(UserError):
    """The run dir is owned by another live run, or holds another trial."""


class Owner(BaseModel):
    """owner.json: who runs the trial in this run dir, and since when."""

    token: str
    trial_id: str
    host: str
    pid: int
    process_start: float | None = None
    command: str = ""
    flow_run_id: str | None = None
    since: float
    renewed_at: float
    released_at: float | None = None

    def standing(self, ttl_s: float, now: float | None = None) -> Standing:
        if self.released_at is not None:
            return "released"
        if self.host == socket.gethostname():
            alive = pid_alive(self.pid) and process_start(self.pid) in (None, self.process_start)
            return "live" if alive else "dead"
        return "expired" if (now or time.time()) - self.renewed_at > ttl_s else "live"

    def describe(self) -> str:
        what = f"`{self.command}`" if self.command else "a run"
        flow = f", Prefect flow run {self.flow_run_id}" if self.flow_run_id else ""
        return f"{what} on {self.host} (pid {self.pid}{flow}) since {_clock(self.since)}"


def ttl() -> float:
    return seconds(TTL_ENV, DEFAULT_TTL_S) or DEFAULT_TTL_S


def process_start(pid: int) -> float | None:
    """When the process started, in clock ticks since boot (Linux), to tell a pid that was reused; else None."""
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return None
    try:
        return float(stat.rsplit(b")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _clock(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def read_owner(store: RunStore) -> tuple[Owner | None, str | None]:
    """The current owner record and its version; (None, None) when there is none. A damaged record counts as
    released (it cannot name a live owner)."""
    try:
        data, version = store.read_versioned(OWNER_FILE)
    except FileNotFoundError:
        return None, None
    try:
        return Owner.model_validate(json.loads(data)), version
    except (ValueError, ValidationError):
        logger.warning("%s/%s is damaged; treating it as released", store.uri, OWNER_FILE)
        now = time.time()
        return Owner(token="", trial_id="", host="", pid=0, since=now, renewed_at=now, released_at=now), version


def busy_message(store: RunStore, owner: Owner, ttl_s: float) -> str:
    wait = "" if owner.host == socket.gethostname() else (
        f"; if that machine is gone, the lease expires {ttl_s:.0f} s after its last renewal "
        f"({_clock(owner.renewed_at)}) and a rerun takes over")
    return (f"the run dir {store.uri} is in use by {owner.describe()}: wait for it to finish, or stop it (Ctrl-C "
            f"where it runs, or cancel its flow run in the Prefect UI) and rerun to resume from its newest "
            f"checkpoint{wait}")


class Lease:
    """This process's ownership of one run dir. ``acquire`` takes it; ``renewing`` keeps it; ``release`` ends it."""

    def __init__(self, store: RunStore, owner: Owner, version: str, previous: Owner | None) -> None:
        self.store, self.owner, self.version = store, owner, version
        self.previous = previous  # the owner this lease was taken over from, when it did not let go itself
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def acquire(cls, store: RunStore, trial_id: str, flow_run_id: str | None = None, command: str | None = None) -> Lease:
        """Take the run dir's lease, or raise RunDirBusy naming the live owner."""
        now = time.time()
        mine = Owner(token=uuid.uuid4().hex, trial_id=trial_id, host=socket.gethostname(), pid=os.getpid(),
                     process_start=process_start(os.getpid()), command=command or _command(), flow_run_id=flow_run_id,
                     since=now, renewed_at=now)
        data = _dump(mine)
        limit = ttl()
        for _ in range(_ATTEMPTS):
            if store.create_bytes(OWNER_FILE, data):
                current, version = read_owner(store)
                if current is not None and current.token == mine.token and version is not None:
                    return cls(store, mine, version, None)
                continue
            current, version = read_owner(store)
            if current is None or version is None:
                continue  # released and removed meanwhile: create again
            if current.token == mine.token:  # our own create, retried after its answer was lost
                return cls(store, mine, version, None)
            standing = current.standing(limit)
            if standing == "live":
                raise RunDirBusy(busy_message(store, current, limit))
            if store.replace_if(OWNER_FILE, data, version):
                _, version = read_owner(store)
                if standing != "released":
                    logger.warning("took over the run dir %s from %s (%s)", store.uri, current.describe(), standing)
                return cls(store, mine, version or "", None if standing == "released" else current)
        raise RunDirBusy(f"the run dir {store.uri} changed owner {_ATTEMPTS} times while this run tried to take it; "
                         "another run is starting there: wait for it, or use another storage path")

    def renew(self) -> bool:
        """Move renewed_at on; False (and ``lost`` set) when another run has taken the lease over."""
        with self._lock:
            if self.lost:
                return False
            owner = self.owner.model_copy(update={"renewed_at": time.time()})
            if self.store.replace_if(OWNER_FILE, _dump(owner), self.version):
                current, version = read_owner(self.store)
            else:
                current, version = read_owner(self.store)
                if current is None or current.token != self.owner.token:
                    self.lost = (f"another run took over the run dir {self.store.uri}"
                                 + (f": {current.describe()}" if current else ""))
                    logger.error("%s", self.lost)
                    return False
            if current is not None and current.token == self.owner.token and version is not None:
                self.owner, self.version = current, version
            return True

    def renewing(self) -> Lease:
        """Renew in a daemon thread every quarter of the lease time until release."""
        interval = max(0.5, ttl() / 4)

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.renew()
                except Exception:  # noqa: BLE001 - a missed renewal is retried; the lease time allows three
                    logger.warning("could not renew the lease of %s", self.store.uri, exc_info=True)

        self._thread = threading.Thread(target=loop, name="gymflow-lease", daemon=True)
        self._thread.start()
        _held[self.store.uri.rstrip("/")] = self
        return self

    def release(self) -> None:
        """Mark the lease released (the record stays, naming the last owner). Never raises."""
        self._stop.set()
        _held.pop(self.store.uri.rstrip("/"), None)
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self.lost:
                return
            released = self.owner.model_copy(update={"released_at": time.time()})
            try:
                if not self.store.replace_if(OWNER_FILE, _dump(released), self.version):
                    current, _ = read_owner(self.store)
                    if current is None or current.token != self.owner.token:
                        logger.warning("the lease of %s had been taken over before its release", self.store.uri)
            except Exception:  # noqa: BLE001 - an unreleased lease only makes the next run wait for it to expire
                logger.warning("could not release the lease of %s", self.store.uri, exc_info=True)


_held: dict[str, Lease] = {}  # run dir -> the lease this process renews on it


def lease_held(run_uri: str) -> None:
    """Raise RunDirBusy when this process's lease on run_uri was taken over (it must stop working there)."""
    lease = _held.get(run_uri.rstrip("/"))
    if lease is not None and lease.lost:
        raise RunDirBusy(f"{lease.lost}; this run stops (its lease was not renewed within {ttl():.0f} s, so it was "
                         "presumed dead)")


def _dump(owner: Owner) -> bytes:
    return (json.dumps(owner.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def _command() -> str:
    argv = [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]]
    if argv[0] in ("__main__.py", "-m"):
        argv[0] = "gymflow"
    return " ".join(argv)[:300]


# -- the run dir holds this trial ------------------------------------------------------
def spec_conflict(store: RunStore, spec_data: dict[str, Any]) -> str | None:
    """When the run dir's spec.json is of another trial: what differs, and the fix; None when it is this trial's
    (or there is none yet)."""
    from gymflow.config import trial_content
    from gymflow.results import SPEC_FILE
    from gymflow.tracking import flatten

    try:
        stored = store.read_json(SPEC_FILE)
    except FileNotFoundError:
        return None
    except ValueError:
        return (f"{store.uri}/{SPEC_FILE} is damaged, so this run dir cannot be resumed safely: delete the run dir or "
                "use another storage path")
    if not isinstance(stored, dict) or stored.get("trial_id") == spec_data.get("trial_id"):
        return None
    before, after = flatten(trial_content(stored)), flatten(trial_content(spec_data))
    fields = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    shown = "; ".join(f"{k}: {before.get(k, '(unset)')} there, {after.get(k, '(unset)')} now" for k in fields[:8])
    more = f" and {len(fields) - 8} more" if len(fields) > 8 else ""
    what = f"differs in {shown}{more}" if fields else f"is trial {stored.get('trial_id')}, not {spec_data.get('trial_id')}"
    return (f"the run dir {store.uri} holds another trial: its spec.json {what}. Resuming it would report the old "
            "model as this trial. Put ${trial_id} in storage (the default does), use another storage path, or delete "
            "the run dir to start over")


def run_dir_problems(spec: Spec) -> list[Problem]:
    """Before a run starts: the trial's run dir holds no other trial and has no live owner (what ``claim`` would
    refuse, said before anything starts; the claim itself still decides races)."""
    from gymflow.errors import StorageError
    from gymflow.storage import open_run

    try:
        store = open_run(spec.storage)
        conflict = spec_conflict(store, spec.model_dump(mode="json"))
        if conflict:
            return [Problem("storage", conflict)]
        owner, _ = read_owner(store)
    except (UserError, StorageError, OSError):
        return []  # the storage checks report what is wrong with the location itself
    limit = ttl()
    if owner is not None and owner.standing(limit) == "live":
        return [Problem("storage", busy_message(store, owner, limit))]
    return []
