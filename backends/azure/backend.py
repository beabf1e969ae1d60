"""The azure backend: each trial a command job on an Azure ML compute cluster, the run dir on blob storage.

provision ensures the cluster (AmlCompute, min 0 nodes: it scales to zero by itself; one that existed is used as
it is and never deleted). launch submits the trial's job when it has none running — display name the trial's run
name, tags with the trial and experiment, a timeout always — whose command starts the worker's agent
(gymflow/agent.py); phases are handed to it through the run dir. poll reads the job's status from one list of
active jobs per poll interval for every trial of this process. A job that ends under a running worker (a
low-priority node reclaimed) is replaced by a new one, which resumes from the newest checkpoint. stop asks the
agent to stop the worker (it checkpoints); teardown cancels whatever still runs and waits until it has ended.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from typing import Any, ClassVar

from backends.azure.settings import AzureBackendSpec
from backends.base import Backend, Features, Handle, Machine, Phase, Timing, WorkerState
from backends.board import Board
from gymflow import agent
from gymflow.errors import Problem
from gymflow.spec import Spec

logger = logging.getLogger(__name__)

_board = Board()
_workspaces: dict[tuple[Any, ...], Any] = {}
_workspaces_lock = threading.Lock()


def job_name(trial_id: str, attempt: int) -> str:
    """gf-<trial>-<attempt>-<random>: job names are unique in a workspace for ever, so a rerun needs new ones."""
    slug = re.sub(r"[^a-z0-9-]+", "-", trial_id.lower()).strip("-")[:40]
    return f"gf-{slug}-{attempt}-{uuid.uuid4().hex[:6]}"


def gpu_size(vm_size: str) -> bool:
    """Azure's N-series sizes (NC, ND, NV) carry GPUs."""
    return vm_size.lower().removeprefix("standard_").startswith("n")


class AzureBackend(Backend):
    """Each trial as an Azure ML command job."""

    name: ClassVar[str] = "azure"
    features: ClassVar[Features] = Features(gpu=True, spot=True, time_limit=True, remote=True)
    Settings = AzureBackendSpec
    default_timing: ClassVar[Timing] = Timing(poll_s=10.0, startup_grace_s=1800.0, heartbeat_timeout_s=600.0)
    settings: AzureBackendSpec

    @property
    def workspace(self) -> Any:
        """The workspace's client (created once per workspace and credentials)."""
        from backends.azure.workspace import Workspace

        s = self.settings
        key = (*s.where(), s.credentials_block)
        with _workspaces_lock:
            if key not in _workspaces:
                _workspaces[key] = Workspace(s)
            return _workspaces[key]

    def _check(self, spec: Spec) -> list[Problem]:
        problems = []
        if not spec.storage.startswith("az://"):
            problems.append(Problem("storage", f"backend azure keeps the run dir in blob storage, not {spec.storage!r}: "
                                               "set storage: az://ACCOUNT/CONTAINER/PREFIX/${trial_id}"))
        if spec.algorithm.device == "cuda" and not gpu_size(self.settings.vm_size):
            problems.append(Problem("backend.vm_size", f"{self.settings.vm_size} has no GPU for algorithm.device cuda: "
                                                       "use an N-series size such as Standard_NC4as_T4_v3"))
        return problems

    def notes(self, trials: list[Spec], max_parallel: int | None) -> list[str]:
        """What the trials' nodes cost: per hour, and at most (every job running until its job_timeout, and its node
        idle until the cluster lets it go)."""
        from backends.azure import prices
        from backends.registry import settings_for

        settings: list[AzureBackendSpec] = [settings_for(type(self), t) for t in trials]  # type: ignore[misc]
        missing = sorted({s.vm_size for s in settings if s.vm_size not in prices.SIZES})
        if missing:
            return [f"cost: no price on record for VM size {', '.join(missing)}; see {prices.SOURCE}"]
        hourly, ceiling, what = [], 0.0, set()
        for s in settings:
            low = s.tier == "low_priority"
            per_hour = prices.hourly(s.vm_size, low) or 0.0
            hourly.append(per_hour)
            lives = 1 + (s.max_preemptions if low else 0)  # a preempted job's successor may run to the limit again
            ceiling += per_hour * (s.timeout_s + s.idle_time_before_scale_down_s) / 3600 * lives
            what.add(f"{s.vm_size}{', low priority' if low else ''}, stopped after {s.job_timeout}"
                     f"{f'; resubmitted up to {s.max_preemptions} times if preempted' if low else ''}")
        source = f"[an estimate from list prices for {prices.REGION} as of {prices.AS_OF}, shipped with gymflow; not a bill]"
        kind = what.pop() if len(what) == 1 else f"{len(what)} configurations"
        if len(trials) == 1:
            return [f"cost: about {prices.money(hourly[0])} per hour of the trial's node ({kind}); at most "
                    f"{prices.money(ceiling)} if its job runs to its time limit {source}"]
        at_once = min(len(trials), max_parallel or settings[0].max_nodes)
        busiest = sum(sorted(hourly, reverse=True)[:at_once])
        return [f"cost: about {prices.money(sum(hourly) / len(hourly))} per node-hour ({kind}); {at_once} nodes at "
                f"once: up to {prices.money(busiest)} per hour; {len(trials)} trials: at most {prices.money(ceiling)} "
                f"if every job runs to its time limit {source}"]

    # -- phases --------------------------------------------------------------------------------
    def _plan(self, spec: Spec) -> Handle:
        return Handle(backend=self.name, trial_id=spec.trial_id or "", run_uri=spec.storage,
                      data={"jobs": [], "attempt": 0, "experiment": self.settings.experiment_name or spec.experiment,
                            "display_name": spec.run_name})

    def _provision(self, spec: Spec) -> Handle:
        handle = self._plan(spec)
        workspace = self.workspace
        workspace.check()
        handle.data["compute_existed"] = workspace.ensure_compute(self.settings)
        self._adopt(handle)
        return handle

    def _adopt(self, handle: Handle) -> None:
        """A job of this run dir still running (its orchestrator died; this run took the lease over) is this trial's
        job again, as a VM is on gcp: two agents must never serve one run dir. Any other such job is cancelled."""
        left = sorted((j for j in self.workspace.active() if j.tags.get("gymflow-run-uri") == handle.run_uri),
                      key=lambda j: j.created)
        for extra in left[:-1]:
            self.workspace.cancel(extra.name)
        if left:
            handle.data.update(job=left[-1].name, jobs=[left[-1].name], submitted_at=time.monotonic(),
                               submitted_wall=left[-1].created or time.time())
            logger.info("job %s of this run dir still runs (its orchestrator was lost): following it", left[-1].name)

    def _setup(self, handle: Handle, spec: Spec) -> None:
        if self.settings.gymflow_install == "wheel":
            handle.data["wheel"] = list(self._ship(handle.run_uri))

    def capacity(self) -> int:
        """One job per node: more would queue, their start-up grace running out while they wait."""
        return self.settings.max_nodes

    def max_replacements(self) -> int:
        return self.settings.max_preemptions

    def replace(self, handle: Handle) -> None:
        """The job ended under a running worker (its node reclaimed): cancel what is left, submit the next one."""
        self._cancel_all(handle)
        handle.data["attempt"] = int(handle.data.get("attempt", 0)) + 1
        self._submit(handle)

    def _submit(self, handle: Handle) -> None:
        from azure.ai.ml import command
        from azure.ai.ml.entities import Environment, ManagedIdentityConfiguration

        from backends.azure import job as job_command

        s = self.settings
        name = job_name(handle.trial_id, int(handle.data.get("attempt", 0)))
        handle.data["jobs"] = [*handle.data.get("jobs", []), name]  # known to teardown before it exists
        handle.data["job"] = name
        wheel = handle.data.get("wheel")
        environment: Any = s.environment or Environment(image=s.image, conda_file=s.conda_file)
        tags = {**s.tags, "gymflow": "managed", "gymflow-trial": handle.trial_id,
                "gymflow-experiment": str(handle.data.get("experiment", "")), "gymflow-run-uri": handle.run_uri}
        job = command(name=name, display_name=str(handle.data.get("display_name") or name),
                      experiment_name=str(handle.data.get("experiment") or "gymflow"),
                      command=job_command.command(s, handle.run_uri, tuple(wheel) if wheel else None),
                      environment=environment, compute=s.compute, tags=tags, timeout=s.timeout_s,
                      identity=ManagedIdentityConfiguration())
        started = time.monotonic()
        self.workspace.submit(job)
        handle.data.update(submitted_at=time.monotonic(), submitted_wall=time.time())
        logger.info("job %s submitted to %s (%s%s) in %.1f s", name, s.compute, s.vm_size,
                    ", low priority" if s.tier == "low_priority" else "", time.monotonic() - started)

    @staticmethod
    def _ship(run_uri: str) -> tuple[str, str, str]:
        """This gymflow's wheel next to the run dirs (shipping.upload): (URI, file name, build)."""
        from gymflow import shipping

        account, container = run_uri[len("az://"):].split("/")[:2]
        return shipping.upload(f"az://{account}/{container}")

    def _status(self, handle: Handle) -> str | None:
        """The trial's current job's status while it is active; None once it has ended."""
        listing = lambda: {j.name: j.status for j in self.workspace.active()}  # noqa: E731
        return _board.of(listing, handle.data["job"], handle.data.get("submitted_at", 0.0), self.timing().poll_s)

    def _launch(self, handle: Handle, phase: Phase) -> dict[str, Any]:
        if not handle.data.get("job") or self._status(handle) is None:
            self._submit(handle)
        store = self.store(handle)
        seq = agent.next_seq(store)
        agent.request_launch(store, seq, phase)
        return {"seq": seq, "job": handle.data["job"]}

    def _poll(self, handle: Handle, phase: Phase) -> WorkerState:
        store = self.store(handle)
        seq = handle.data[phase]["seq"]
        reported = agent.phase_state(store, seq)
        if reported is not None and reported.state == "exited":
            return WorkerState(running=False, exit_code=reported.exit_code)
        status = self._status(handle)
        if status is not None:
            return WorkerState(running=True, detail=status)
        name = handle.data["job"]
        info = self.workspace.job(name)  # it has ended: why (one call, once)
        reported = agent.phase_state(store, seq)  # the agent may have reported the end as the job ended
        if reported is not None and reported.state == "exited":
            return WorkerState(running=False, exit_code=reported.exit_code)
        why = f"job {name} ended {info.status if info else 'and is gone'}{f': {info.error}' if info and info.error else ''}"
        if time.time() - float(handle.data.get("submitted_wall", 0.0)) >= self.settings.timeout_s:
            return WorkerState(running=False, detail=f"{why} (it ran out of backend.job_timeout, "
                                                     f"{self.settings.job_timeout})")
        # ended under a running worker (or saying so): its node was reclaimed, and a new job resumes the phase
        preempted = reported is not None or "preempt" in (info.error if info else "").lower()
        return WorkerState(running=False, detail=why, lost=preempted)

    def _stop(self, handle: Handle, phase: Phase) -> None:
        launched = handle.data.get(phase)
        if isinstance(launched, dict) and "seq" in launched:
            agent.request_stop(self.store(handle), launched["seq"])

    def _teardown(self, handle: Handle) -> None:
        self._cancel_all(handle)

    def _cancel_all(self, handle: Handle) -> None:
        """Cancel every job of the trial that has not ended (the cluster scales down by itself)."""
        names = list(handle.data.get("jobs", []))
        if not names and not handle.provisioned:
            return  # nothing was submitted
        for name in names:
            if self.workspace.cancel(name):
                logger.info("job %s cancelled", name)

    def machines(self) -> list[Machine]:
        return [Machine(kind="job", id=j.name, trial_id=j.tags.get("gymflow-trial", ""),
                        run_uri=j.tags.get("gymflow-run-uri", ""), age_s=time.time() - j.created if j.created else 0.0,
                        where=j.compute, removal=("cancel", "cancelled")) for j in self.workspace.active()]

    def remove(self, machine: Machine) -> None:
        self.workspace.cancel(machine.id)

    def output_hint(self, handle: Handle, phase: Phase) -> str:
        from backends.azure.job import OUTPUT

        where = f"{handle.run_uri.rstrip('/')}/worker.log"
        name = handle.data.get("job")
        if not name:
            return where
        try:
            tail = self.store(handle).read_bytes(OUTPUT).decode(errors="replace").splitlines()[-30:]
        except FileNotFoundError:
            tail = []
        studio = f"the job {name}'s std_log.txt in Azure ML studio (Outputs + logs)"
        return f"{where} and {studio}; the job's output ends:\n" + "\n".join(tail) if tail else f"{where} and {studio}"
