"""Compute Engine through google-cloud-compute: create a trial's VM (zone by zone), follow it, delete it.

Only the REST API, no `gcloud` and no SSH. `compute_v1` takes seconds to import: it is loaded on first use.
Operations are waited on through our own ZoneOperationsClient (the ExtendedOperation's own `.result()` polls
through a client built without our endpoint).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from backends.base import BackendError, TransientBackendError
from gymflow.errors import UserError

logger = logging.getLogger(__name__)

T = TypeVar("T")
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
MANAGED_LABEL = "gymflow"  # gymflow=managed on everything gymflow creates
CAPACITY_ERRORS = {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "QUOTA_EXCEEDED",
                   "RESOURCE_POOL_EXHAUSTED", "STOCKOUT"}
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # 429 and 5xx
OPERATION_TIMEOUT_S = 600.0


class CapacityError(TransientBackendError):
    """The zone has no capacity or quota for the VM: the next zone may."""


@dataclass(frozen=True)
class Instance:
    name: str
    zone: str
    status: str
    labels: dict[str, str]
    metadata: dict[str, str]
    created: str = ""


def credentials(block: str | None) -> tuple[Any, str | None]:
    """(credentials, project) from a Prefect GcpCredentials block, else Application Default Credentials."""
    if block:
        try:
            from prefect_gcp import GcpCredentials  # type: ignore[import-not-found]
        except ImportError:
            raise UserError(f"backend.credentials_block: {block!r} needs prefect-gcp (pip install prefect-gcp)") from None
        try:
            found = GcpCredentials.load(block)
        except ValueError as exc:
            raise UserError(f"backend.credentials_block: no Prefect block {block!r}: {exc}") from None
        return found.get_credentials_from_service_account(), found.project
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError:
        raise UserError("backend: no Google Cloud credentials found. Run `gcloud auth application-default login`, or "
                        "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or name a Prefect "
                        "GcpCredentials block in backend.credentials_block") from None


def retrying(call: Callable[[], T], what: str) -> T:
    """call(), retried with backoff on 429 and 5xx; other API errors are raised as they are."""
    from google.api_core import exceptions as gexc

    for delay in (*RETRY_DELAYS_S, None):
        try:
            return call()
        except (gexc.TooManyRequests, gexc.ServerError, gexc.ServiceUnavailable) as exc:
            if delay is None:
                raise TransientBackendError(f"Compute Engine kept failing to {what}: {exc}") from exc
            logger.info("Compute Engine answered %s to %s; again in %.0f s", exc.code, what, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class Compute:
    """The Compute Engine calls of one project, through one set of clients."""

    def __init__(self, project: str | None, api_endpoint: str | None, credentials_block: str | None) -> None:
        from google.api_core.client_options import ClientOptions
        from google.cloud import compute_v1

        creds, default_project = credentials(credentials_block)
        self.project = project or default_project
        if not self.project:
            raise UserError("backend.project: no Google Cloud project given and none comes with the credentials; "
                            "set backend.project (or `gcloud config set project`)")
        options = ClientOptions(api_endpoint=api_endpoint) if api_endpoint else None
        self.instances = compute_v1.InstancesClient(credentials=creds, client_options=options)
        self.operations = compute_v1.ZoneOperationsClient(credentials=creds, client_options=options)
        self.v1 = compute_v1

    # -- create --------------------------------------------------------------------------------
    def create(self, zones: Iterable[str], build: Callable[[str], Any]) -> str:
        """Create the VM `build(zone)` gives in the first zone that has room; returns that zone."""
        skipped: list[str] = []
        for zone in zones:
            try:
                self._insert(zone, build(zone))
                if skipped:
                    logger.info("VM created in %s (no room in %s)", zone, "; ".join(skipped))
                return zone
            except CapacityError as exc:
                skipped.append(f"{zone}: {exc}")
                logger.warning("no room for the VM in %s (%s); trying the next zone", zone, exc)
        raise TransientBackendError("no zone had capacity or quota for the VM: " + "; ".join(skipped)
                                    + ". Add zones to backend.fallback_zones, use another machine type, or ask for quota")

    def _insert(self, zone: str, instance: Any) -> None:
        from google.api_core import exceptions as gexc

        try:
            operation = retrying(lambda: self.instances.insert(project=self.project, zone=zone, instance_resource=instance),
                                 f"create VM {instance.name}")
        except gexc.Conflict:
            logger.info("VM %s exists already (a retried create)", instance.name)
            return
        except gexc.GoogleAPICallError as exc:
            raise _explained(exc, zone) from None
        self.wait(zone, operation.name, f"create VM {instance.name}")

    def wait(self, zone: str, operation: str, what: str) -> None:
        """Until the zone operation is DONE; its error raised (capacity errors as CapacityError)."""
        deadline = time.monotonic() + OPERATION_TIMEOUT_S
        while True:
            op = retrying(lambda: self.operations.wait(project=self.project, zone=zone, operation=operation), what)
            if op.status == self.v1.Operation.Status.DONE:
                break
            if time.monotonic() > deadline:
                raise TransientBackendError(f"Compute Engine did not finish to {what} within {OPERATION_TIMEOUT_S:.0f} s")
        errors = list(op.error.errors) if op.error else []
        if not errors:
            return
        codes = {e.code for e in errors}
        message = "; ".join(f"{e.code}: {e.message}" for e in errors)
        if codes & CAPACITY_ERRORS:
            raise CapacityError(message)
        raise BackendError(f"Compute Engine could not {what} in {zone}: {message}")

    # -- read ----------------------------------------------------------------------------------
    def get(self, zone: str, name: str) -> Instance | None:
        from google.api_core import exceptions as gexc

        try:
            found = retrying(lambda: self.instances.get(project=self.project, zone=zone, instance=name), f"read VM {name}")
        except gexc.NotFound:
            return None
        return _instance(found, zone)

    def managed(self, extra_filter: str = "") -> list[Instance]:
        """Every VM labelled gymflow=managed in the project, all zones, in one aggregated list."""
        query = f"labels.{MANAGED_LABEL}=managed" + (f" AND {extra_filter}" if extra_filter else "")
        request = self.v1.AggregatedListInstancesRequest(project=self.project, filter=query)
        pages = retrying(lambda: list(self.instances.aggregated_list(request=request)), "list gymflow's VMs")
        found = []
        for scope, scoped in pages:
            zone = scope.rsplit("/", 1)[-1]
            found += [_instance(i, zone) for i in scoped.instances]
        return found

    def serial_tail(self, zone: str, name: str, chars: int = 4000) -> str:
        """The end of the VM's serial console (its boot and startup-script output); '' when there is none."""
        from google.api_core import exceptions as gexc

        try:
            output = self.instances.get_serial_port_output(request=self.v1.GetSerialPortOutputInstanceRequest(
                project=self.project, zone=zone, instance=name, port=1))
        except gexc.GoogleAPICallError as exc:
            return f"(serial console not readable: {exc})"
        return str(output.contents)[-chars:]

    # -- delete --------------------------------------------------------------------------------
    def delete(self, zone: str, name: str) -> bool:
        """Delete the VM and wait until it is gone; False when there was none (a 404 is success)."""
        from google.api_core import exceptions as gexc

        try:
            operation = retrying(lambda: self.instances.delete(project=self.project, zone=zone, instance=name),
                                 f"delete VM {name}")
        except gexc.NotFound:
            return False
        try:
            self.wait(zone, operation.name, f"delete VM {name}")
        except BackendError as exc:
            if "notFound" not in str(exc) and "RESOURCE_NOT_FOUND" not in str(exc):
                raise
        deadline = time.monotonic() + OPERATION_TIMEOUT_S
        while self.get(zone, name) is not None:
            if time.monotonic() > deadline:
                raise TransientBackendError(f"VM {name} in {zone} still exists {OPERATION_TIMEOUT_S:.0f} s after its deletion "
                                            "was accepted; `gymflow gc --backend gcp` deletes it later, and its "
                                            "max_run_duration at the latest")
            time.sleep(2.0)
        return True


def _instance(found: Any, zone: str) -> Instance:
    items = {item.key: item.value for item in found.metadata.items} if found.metadata else {}
    return Instance(name=found.name, zone=zone, status=str(found.status), labels=dict(found.labels), metadata=items,
                    created=str(found.creation_timestamp))


def _explained(exc: Any, zone: str) -> Exception:
    """An API error at create as the setting to fix."""
    from google.api_core import exceptions as gexc

    text = str(exc)
    if isinstance(exc, gexc.Forbidden):
        return UserError(f"backend: permission denied creating a VM ({text}). The orchestrator's account needs "
                         "roles/compute.instanceAdmin.v1 and roles/iam.serviceAccountUser on the VM's service account")
    for setting, words in (("machine_type", ("machineType", "machine type")), ("image", ("image", "sourceImage")),
                           ("accelerator_type", ("acceleratorType", "accelerator")),
                           ("service_account", ("serviceAccount", "service account")),
                           ("subnetwork", ("subnetwork",)), ("network", ("network",)), ("zone", ("zone",))):
        if any(word in text for word in words):
            return UserError(f"backend.{setting}: Compute Engine refused it in {zone}: {text}. Check the name "
                             f"(`gcloud compute {_listing(setting)}`)")
    if isinstance(exc, (gexc.BadRequest, gexc.NotFound)):
        return UserError(f"backend: Compute Engine refused the VM in {zone}: {text}")
    return BackendError(f"Compute Engine could not create the VM in {zone}: {text}")


def _listing(setting: str) -> str:
    return {"machine_type": "machine-types list", "image": "images list", "accelerator_type": "accelerator-types list",
            "zone": "zones list", "network": "networks list", "subnetwork": "networks subnets list",
            "service_account": "iam service-accounts list"}.get(setting, "--help")

