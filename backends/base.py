"""The backend contract: public phases do the logging and checks once, subclasses fill small hooks.

A backend is created from the spec's ``backend`` settings. Its phases are
``provision`` -> ``setup`` -> ``launch``/``poll`` (per worker phase) -> ``teardown``.
``teardown`` must be idempotent and safe on a half-provisioned handle: it is called
from a ``finally`` whatever happened before.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from gymflow.errors import GymflowError, Problem
from gymflow.results import SPEC_FILE
from gymflow.spec import Spec
from gymflow.storage import RunStore, open_run, prepare

logger = logging.getLogger(__name__)

Phase = Literal["train", "evaluate"]


class BackendError(GymflowError):
    """A backend operation failed; not worth retrying."""


class TransientBackendError(BackendError):
    """A backend operation failed in a way a retry can fix (quota, 429, 5xx, timeouts)."""


class Features(BaseModel):
    """What a backend supports; checked against the spec before anything is provisioned."""

    model_config = ConfigDict(frozen=True)

    gpu: bool = False
    spot: bool = False
    time_limit: bool = False
    remote: bool = False  # trials work on machines of their own: a sweep follows them from threads, all at once by default


class Handle(BaseModel):
    """What provision returns and every later phase receives; JSON-serialisable for Prefect."""

    backend: str
    trial_id: str
    run_uri: str
    provisioned: bool = False
    data: dict[str, Any] = Field(default_factory=dict, description="Backend-specific ids (pid, VM name, job name).")


class WorkerState(BaseModel):
    """What poll sees of a launched worker phase."""

    running: bool
    exit_code: int | None = None
    detail: str = ""
    lost: bool = False  # the machine under the worker is gone (a preempted or deleted VM): no exit code will come


class Machine(BaseModel):
    """Something a backend created for a trial that costs money while it exists (a VM, a job): what gc looks at."""

    kind: str  # "VM", "job"
    id: str
    trial_id: str
    run_uri: str
    age_s: float
    where: str = ""  # zone, cluster
    removal: tuple[str, str] = ("delete", "deleted")  # what remove() does to it, and its past tense


class Timing(BaseModel):
    """How the train and evaluate tasks follow a worker on this backend."""

    model_config = ConfigDict(frozen=True)

    poll_s: float = Field(1.0, gt=0, description="How often the worker's state is asked for.")
    startup_grace_s: float = Field(600.0, gt=0, description="How long a launched worker may take to write its first "
                                   "status (a VM boots, a job queues) before it is presumed lost.")
    heartbeat_timeout_s: float = Field(300.0, gt=0, description="How long a worker's heartbeat may stand still "
                                       "(measured on the orchestrator's clock) before it is presumed lost.")


class Backend(ABC):
    """Base class of every backend. Subclasses set ``name``/``features`` and implement the hooks."""

    name: ClassVar[str]
    features: ClassVar[Features] = Features()
    Settings: ClassVar[type[BaseModel]]

    def __init__(self, settings: BaseModel) -> None:
        self.settings = settings

    # -- checks ------------------------------------------------------------------
    def check(self, spec: Spec) -> list[Problem]:
        """Problems that make the spec unrunnable here (requested features, settings)."""
        problems = []
        if spec.algorithm.device == "cuda" and not self.features.gpu:
            problems.append(Problem("algorithm.device", f"backend {self.name!r} has no GPU; use device auto or cpu, or a GPU backend"))
        return problems + self._check(spec)

    def _check(self, spec: Spec) -> list[Problem]:
        return []

    def notes(self, trials: list[Spec], max_parallel: int | None) -> list[str]:
        """What `gymflow validate` tells the user about running these trials here (what they cost, say); none by default."""
        return []

    # -- phases --------------------------------------------------------------------
    def plan(self, spec: Spec) -> Handle:
        """The handle before provisioning: enough for teardown to find anything half-made."""
        return self._plan(spec)

    def provision(self, spec: Spec) -> Handle:
        """Acquire what the trial runs on."""
        started = time.perf_counter()
        prepare(spec.storage, spec.create_bucket)  # the run dir's folder, bucket or container
        handle = self._provision(spec)
        handle.provisioned = True
        logger.info("provisioned %s for trial %s in %.1f s", self.name, spec.trial_id, time.perf_counter() - started)
        return handle

    def setup(self, handle: Handle, spec: Spec) -> None:
        """Write the resolved spec to the run dir and prepare the worker."""
        self.store(handle).write_json(SPEC_FILE, spec.model_dump(mode="json"))
        self._setup(handle, spec)
        logger.info("run dir ready: %s", handle.run_uri)

    def launch(self, handle: Handle, phase: Phase) -> Handle:
        """Start `gymflow worker PHASE RUN_URI`; records the phase's ids in handle.data (in place)."""
        logger.info("launching worker %s on %s", phase, self.name)
        handle.data[phase] = self._launch(handle, phase)
        return handle

    def poll(self, handle: Handle, phase: Phase) -> WorkerState:
        """Whether the worker phase still runs, and its exit code once it ended."""
        return self._poll(handle, phase)

    def stop(self, handle: Handle, phase: Phase) -> None:
        """Ask a running worker phase to stop (it checkpoints first); idempotent."""
        self._stop(handle, phase)

    def capacity(self) -> int | None:
        """How many trials this backend's settings let run at once (a cluster's nodes); None: no limit of its own.
        A sweep runs no more than that at once unless its max_parallel says otherwise."""
        return None

    def max_replacements(self) -> int:
        """How many times a trial's machine may be replaced when it is lost under a running worker (0: never)."""
        return 0

    def replace(self, handle: Handle) -> None:
        """A new machine for a trial whose machine was lost (WorkerState.lost), the old one released; records it
        in handle.data (in place). Only called up to max_replacements() times."""
        raise NotImplementedError(f"backend {self.name!r} cannot replace a lost machine")

    def machines(self) -> list[Machine]:
        """Everything this backend created for trials that still exists, found by its labels or tags (for gc).
        Default: nothing (the local backend's workers end with their orchestrator)."""
        return []

    def remove(self, machine: Machine) -> None:
        """Delete one of machines(); idempotent."""

    def teardown(self, handle: Handle | None) -> None:
        """Release everything provisioned. Idempotent; safe on a half-provisioned or missing handle."""
        if handle is None:
            return
        started = time.perf_counter()
        self._teardown(handle)
        logger.info("teardown of %s for trial %s done in %.1f s", self.name, handle.trial_id, time.perf_counter() - started)

    def store(self, handle: Handle) -> RunStore:
        """The trial's run directory."""
        return open_run(handle.run_uri)

    def timing(self) -> Timing:
        """Poll interval, start-up grace and heartbeat timeout: the settings' fields of those names where they
        have them, else the backend's defaults (``default_timing``)."""
        values = {name: getattr(self.settings, name) for name in Timing.model_fields if hasattr(self.settings, name)}
        return self.default_timing.model_copy(update={k: float(v) for k, v in values.items() if v is not None})

    default_timing: ClassVar[Timing] = Timing()

    def output_hint(self, handle: Handle, phase: Phase) -> str:
        """Where to look when a worker phase ended without a word: a file in the run dir, whatever the store."""
        return f"{handle.run_uri.rstrip('/')}/worker.log"

    # -- many trials from one process (sweeps) ---------------------------------------
    @contextmanager
    def sweep_scope(self, trials: int) -> Iterator[None]:
        """Around the trials of a sweep that this process runs, up to `trials` at once: a backend may start what
        they need ahead (so that start-up overlaps the orchestrator's own) and keep it warm between trials; it
        releases whatever is left when the scope ends. Scopes may nest. Default: nothing."""
        yield

    # -- hooks -------------------------------------------------------------------
    @abstractmethod
    def _plan(self, spec: Spec) -> Handle: ...

    @abstractmethod
    def _provision(self, spec: Spec) -> Handle: ...

    @abstractmethod
    def _setup(self, handle: Handle, spec: Spec) -> None: ...

    @abstractmethod
    def _launch(self, handle: Handle, phase: Phase) -> dict[str, Any]:
        """Start the worker phase; return its ids (pid, job name) to keep in handle.data[phase]."""

    @abstractmethod
    def _poll(self, handle: Handle, phase: Phase) -> WorkerState: ...

    @abstractmethod
    def _stop(self, handle: Handle, phase: Phase) -> None: ...

    @abstractmethod
    def _teardown(self, handle: Handle) -> None: ...
