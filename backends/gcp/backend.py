"""The gcp backend: one Compute Engine VM per trial, the run dir in Cloud Storage, phases handed over through it.

provision creates the VM (labelled gymflow=managed, with the trial and experiment; a cloud-side
`maxRunDuration` that deletes it, so a lost orchestrator cannot leak it) in the first zone with room. Its
startup script starts the worker's agent (gymflow/agent.py) on the run dir; launch, poll and stop go through
the run dir and the VM's status, never SSH. poll reads the VM's status from one aggregated list per poll
interval for every trial of this process. teardown deletes the VM and waits until it is gone.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, ClassVar

from backends.base import Backend, Features, Handle, Machine, Phase, Timing, WorkerState
from backends.board import Board
from backends.gcp.settings import GcpBackendSpec
from gymflow import agent
from gymflow.errors import Problem
from gymflow.spec import Spec, duration_s

logger = logging.getLogger(__name__)

_LABEL_VALUE = re.compile(r"[^a-z0-9_-]+")


def label_value(text: str) -> str:
    """A Compute Engine label value: lowercase letters, digits, _ and -, at most 63."""
    return _LABEL_VALUE.sub("-", text.lower())[:63]


def vm_name(trial_id: str, attempt: int) -> str:
    """gf-<trial id>-<attempt>: a valid instance name ([a-z]([-a-z0-9]*[a-z0-9])?, at most 63)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", trial_id.lower()).strip("-")[:52]
    return f"gf-{slug}-{attempt}"


_board = Board()
_computes: dict[tuple[str | None, str | None, str | None], Any] = {}
_computes_lock = threading.Lock()


def _idle_gpu(trial: Spec, s: GcpBackendSpec) -> str | None:
    """A warning when the trial's machine type (its settings `s`) carries a GPU that its training will not use."""
    from backends.gcp import prices
    from gymflow import buildcheck
    from gymflow.runtime.devices import choose

    policy = buildcheck.policy(trial.env, trial.algorithm)  # what validate's build check built
    if not _gpu_machine(s) or policy is None:
        return None
    choice = choose(trial.algorithm.device, trial.algorithm, policy, cuda=True)
    if choice.device != "cpu":
        return None
    cheaper = prices.hourly(CPU_MACHINE, None, 1, s.spot, s.boot_disk_gb).per_hour
    why = (f"algorithm.device auto trains it on the CPU ({choice.reason})" if trial.algorithm.device == "auto"
           else choice.reason)
    return (f"warning: backend.machine_type {s.machine_type}{f' + {s.accelerator_type}' if s.accelerator_type else ''} "
            f"has a GPU that this trial will not use: {why}. A CPU machine type such as {CPU_MACHINE} (about "
            f"{prices.money(cheaper or 0)} per hour) does the same work; or set algorithm.device: cuda to use the GPU")


def _gpu_machine(s: GcpBackendSpec) -> bool:
    return s.accelerator_type is not None or s.machine_type.split("-")[0] in ("g2", "a2", "a3", "g4")


CPU_MACHINE = "n2-standard-4"


class GcpBackend(Backend):
    """Each trial on its own Compute Engine VM."""

    name: ClassVar[str] = "gcp"
    features: ClassVar[Features] = Features(gpu=True, spot=True, time_limit=True, remote=True)
    Settings = GcpBackendSpec
    default_timing: ClassVar[Timing] = Timing(poll_s=10.0, startup_grace_s=900.0, heartbeat_timeout_s=600.0)
    settings: GcpBackendSpec

    @property
    def compute(self) -> Any:
        """The Compute Engine clients (created once per project, endpoint and credentials)."""
        from backends.gcp.compute import Compute

        s = self.settings
        key = (s.project, s.api_endpoint, s.credentials_block)
        with _computes_lock:
            if key not in _computes:
                _computes[key] = Compute(s.project, s.api_endpoint, s.credentials_block)
            return _computes[key]

    def _check(self, spec: Spec) -> list[Problem]:
        problems = []
        if not spec.storage.startswith("gs://"):
            problems.append(Problem("storage", f"backend gcp keeps the run dir in Cloud Storage, not {spec.storage!r}: "
                                               "set storage: gs://BUCKET/PREFIX/${trial_id}"))
        if spec.algorithm.device == "cuda" and not self._has_gpu():
            problems.append(Problem("backend.machine_type", f"{self.settings.machine_type} has no GPU for algorithm.device "
                                                            "cuda: use a g2/a2/a3 machine type, or set accelerator_type"))
        return problems

    def _has_gpu(self) -> bool:
        return _gpu_machine(self.settings)

    def notes(self, trials: list[Spec], max_parallel: int | None) -> list[str]:
        """What the trials' VMs cost: per hour, and at most (every VM running until its max_run_duration)."""
        from backends.gcp import prices
        from backends.registry import settings_for

        settings: list[GcpBackendSpec] = [settings_for(type(self), t) for t in trials]  # type: ignore[misc]
        hourly, ceiling, missing, machines = [], 0.0, set(), set()
        for s in settings:
            estimate = prices.hourly(s.machine_type, s.accelerator_type, s.accelerator_count, s.spot, s.boot_disk_gb)
            if estimate.per_hour is None:
                missing.add(estimate.missing or "")
                continue
            hourly.append(estimate.per_hour)
            lives = 1 + (s.max_preemptions if s.spot else 0)  # a preempted VM's replacement runs up to the limit again
            ceiling += estimate.per_hour * duration_s(s.max_run_duration) / 3600 * lives
            gpu = f" + {s.accelerator_count}x {s.accelerator_type}" if s.accelerator_type else ""
            machines.add(f"{s.machine_type}{gpu}{' spot' if s.spot else ''}, {s.boot_disk_gb} GB disk, deleted after "
                         f"{s.max_run_duration}{f'; replaced up to {s.max_preemptions} times if preempted' if s.spot else ''}")
        idle = list(dict.fromkeys(n for n in (_idle_gpu(t, s) for t, s in zip(trials, settings)) if n))
        if missing:
            return [f"cost: no price on record for {', '.join(sorted(missing))}; see {prices.SOURCE}", *idle]
        source = f"[an estimate from list prices for {prices.REGION} as of {prices.AS_OF}, shipped with gymflow; not a bill]"
        what = machines.pop() if len(machines) == 1 else f"{len(machines)} machine configurations"
        if len(trials) == 1:
            return [f"cost: about {prices.money(hourly[0])} per hour of the trial's VM ({what}); at most "
                    f"{prices.money(ceiling)} if it runs to its time limit {source}", *idle]
        at_once = min(len(trials), max_parallel or len(trials))
        busiest = sum(sorted(hourly, reverse=True)[:at_once])
        return [f"cost: about {prices.money(sum(hourly) / len(hourly))} per VM-hour ({what}); {at_once} VMs at once: up "
                f"to {prices.money(busiest)} per hour; {len(trials)} trials: at most {prices.money(ceiling)} if every "
                f"VM runs to its time limit {source}", *idle]

    # -- phases --------------------------------------------------------------------------------
    def _plan(self, spec: Spec) -> Handle:
        trial = spec.trial_id or ""
        return Handle(backend=self.name, trial_id=trial, run_uri=spec.storage,
                      data={"vm": vm_name(trial, 0), "attempt": 0, "zone": None, "experiment": spec.experiment})

    def _provision(self, spec: Spec) -> Handle:
        handle = self._plan(spec)
        self._create(handle)
        return handle

    def max_replacements(self) -> int:
        return self.settings.max_preemptions

    def replace(self, handle: Handle) -> None:
        """A preempted (or otherwise lost) VM: delete what is left of it, create the next one of the trial."""
        old_zone, old = handle.data.get("zone"), handle.data["vm"]
        if old_zone:
            self.compute.delete(old_zone, old)
        attempt = int(handle.data.get("attempt", 0)) + 1
        handle.data.update(attempt=attempt, vm=vm_name(handle.trial_id, attempt), zone=None)
        self._create(handle)

    def _create(self, handle: Handle) -> None:
        import gymflow
        from backends.gcp import startup

        name = handle.data["vm"]
        wheel = self._ship(handle.run_uri) if self.settings.gymflow_install == "wheel" else None
        script = startup.script(self.settings, handle.run_uri, handle.trial_id, gymflow.__version__, wheel,
                                gpu=self._has_gpu())
        labels = {**self.settings.labels, "gymflow": "managed", "gymflow-trial": label_value(handle.trial_id),
                  "gymflow-experiment": label_value(str(handle.data.get("experiment", "")))}
        metadata = {"startup-script": script, "gymflow-run-uri": handle.run_uri}
        started = time.monotonic()
        zone = self.compute.create(self.settings.zones, lambda z: self._instance(name, z, labels, metadata))
        handle.data.update(zone=zone, created_at=time.monotonic())
        logger.info("VM %s (%s%s%s) created in %s in %.1f s", name, self.settings.machine_type,
                    ", spot" if self.settings.spot else "",
                    f", container {self.settings.container_image}" if self.settings.container_image else "", zone,
                    time.monotonic() - started)

    @staticmethod
    def _ship(run_uri: str) -> tuple[str, str, str]:
        """This gymflow's wheel next to the run dirs (shipping.upload): (URI, file name, build)."""
        from gymflow import shipping

        bucket = run_uri[len("gs://"):].split("/", 1)[0]
        return shipping.upload(f"gs://{bucket}")

    def _instance(self, name: str, zone: str, labels: dict[str, str], metadata: dict[str, str]) -> Any:
        v1 = self.compute.v1
        s = self.settings
        # GPU and spot VMs cannot live-migrate: host maintenance stops them (a spot VM's preemption, in effect)
        scheduling = v1.Scheduling(instance_termination_action="DELETE", max_run_duration=v1.Duration(seconds=s.run_duration_s),
                                   automatic_restart=False,
                                   on_host_maintenance="TERMINATE" if self._has_gpu() or s.spot else "MIGRATE")
        if s.spot:
            scheduling.provisioning_model = "SPOT"
        disk = v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=v1.AttachedDiskInitializeParams(
            source_image=s.image, disk_size_gb=s.boot_disk_gb))
        nic = v1.NetworkInterface()
        if s.network:
            nic.network = s.network
        if s.subnetwork:
            nic.subnetwork = s.subnetwork
        if s.external_ip:
            nic.access_configs = [v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
        instance = v1.Instance(name=name, machine_type=f"zones/{zone}/machineTypes/{s.machine_type}", disks=[disk],
                               network_interfaces=[nic], scheduling=scheduling, labels=labels,
                               metadata=v1.Metadata(items=[v1.Items(key=k, value=v) for k, v in metadata.items()]))
        if s.accelerator_type:
            instance.guest_accelerators = [v1.AcceleratorConfig(
                accelerator_type=f"zones/{zone}/acceleratorTypes/{s.accelerator_type}", accelerator_count=s.accelerator_count)]
        account = v1.ServiceAccount(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        if s.service_account:
            account.email = s.service_account
        instance.service_accounts = [account]
        return instance

    def _setup(self, handle: Handle, spec: Spec) -> None:
        pass  # the base class wrote spec.json to the bucket; the VM's agent reads the run dir from there

    def _launch(self, handle: Handle, phase: Phase) -> dict[str, Any]:
        store = self.store(handle)
        seq = agent.next_seq(store)
        agent.request_launch(store, seq, phase)
        return {"seq": seq, "vm": handle.data["vm"]}

    def _poll(self, handle: Handle, phase: Phase) -> WorkerState:
        seq = handle.data[phase]["seq"]
        reported = agent.phase_state(self.store(handle), seq)
        if reported is not None and reported.state == "exited":
            return WorkerState(running=False, exit_code=reported.exit_code)
        name = handle.data["vm"]
        status = _board.of(lambda: {vm.name: vm.status for vm in self.compute.managed()}, name,
                           handle.data.get("created_at", 0.0), self.timing().poll_s)
        if status is None or status in ("TERMINATED", "STOPPING", "STOPPED", "SUSPENDING", "SUSPENDED"):
            return WorkerState(running=False, detail=f"VM {name} is {'gone' if status is None else status}", lost=True)
        return WorkerState(running=True, detail=status)

    def _stop(self, handle: Handle, phase: Phase) -> None:
        launched = handle.data.get(phase)
        if isinstance(launched, dict) and "seq" in launched:
            agent.request_stop(self.store(handle), launched["seq"])

    def _teardown(self, handle: Handle) -> None:
        names = {vm_name(handle.trial_id, n) for n in range(int(handle.data.get("attempt", 0)) + 1)}
        zone = handle.data.get("zone")
        found = [(zone, n) for n in names] if zone else []
        if not found:  # a half-provisioned trial: find its VMs by label
            found = [(vm.zone, vm.name) for vm in self.compute.managed(f"labels.gymflow-trial={label_value(handle.trial_id)}")
                     if vm.name in names]
        for vm_zone, name in found:
            if self.compute.delete(vm_zone, name):
                logger.info("VM %s deleted", name)

    def machines(self) -> list[Machine]:
        from datetime import datetime

        found = []
        for vm in self.compute.managed():
            try:
                age = time.time() - datetime.fromisoformat(vm.created).timestamp()
            except ValueError:
                age = 0.0
            found.append(Machine(kind="VM", id=vm.name, trial_id=vm.labels.get("gymflow-trial", ""),
                                 run_uri=vm.metadata.get("gymflow-run-uri", ""), age_s=age, where=vm.zone))
        return found

    def remove(self, machine: Machine) -> None:
        self.compute.delete(machine.where, machine.id)

    def output_hint(self, handle: Handle, phase: Phase) -> str:
        zone, name = handle.data.get("zone"), handle.data.get("vm")
        tail = self.compute.serial_tail(zone, name) if zone and name else ""
        where = f"{handle.run_uri.rstrip('/')}/worker.log"
        return f"{where}; the VM's serial console ends:\n{tail}" if tail else where
