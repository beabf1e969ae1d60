"""An Azure ML workspace through azure-ai-ml's MLClient: the cluster ensured, command jobs submitted, followed and
cancelled. Errors a user can fix (credentials, a missing workspace, quota) become one UserError each, naming the
setting and the fix; azure-core itself retries 429 and 5xx (honouring Retry-After). `azure.ai.ml` takes seconds to
import: it is loaded on first use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from backends.azure.settings import AzureBackendSpec
from backends.base import BackendError, TransientBackendError
from gymflow.errors import MissingExtraError, UserError

logger = logging.getLogger(__name__)

T = TypeVar("T")
MANAGED_TAG = "gymflow"  # gymflow=managed on every job gymflow submits
TERMINAL = {"Completed", "Failed", "Canceled", "NotResponding", "Paused"}
CANCEL_WAIT_S = 120.0


@dataclass(frozen=True)
class JobInfo:
    name: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    compute: str = ""
    error: str = ""

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


NO_CREDENTIALS = ("backend: no Azure credentials found. Run `az login` (or set AZURE_CLIENT_ID, AZURE_TENANT_ID and "
                  "AZURE_CLIENT_SECRET for a service principal, or run where a managed identity is assigned), or name a "
                  "Prefect AzureMlCredentials block in backend.credentials_block")


def credential(block: str | None) -> Any:
    """DefaultAzureCredential, or a service principal's from a Prefect AzureMlCredentials block."""
    if block:
        try:
            from prefect_azure import AzureMlCredentials  # type: ignore[import-not-found]
        except ImportError:
            raise UserError(f"backend.credentials_block: {block!r} needs prefect-azure (pip install prefect-azure)") from None
        try:
            found = AzureMlCredentials.load(block)
        except ValueError as exc:
            raise UserError(f"backend.credentials_block: no Prefect block {block!r}: {exc}") from None
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(found.tenant_id, found.service_principal_id,
                                      found.service_principal_password.get_secret_value())
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise MissingExtraError("azure-identity", "azure", "The azure backend") from None
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


class Workspace:
    """One workspace's MLClient, created once per (subscription, resource group, workspace, credentials)."""

    def __init__(self, settings: AzureBackendSpec) -> None:
        subscription, group, name = settings.where()
        missing = [f"backend.{key} (or ${env})" for key, env, value in (
            ("subscription_id", "AZURE_SUBSCRIPTION_ID", subscription), ("resource_group", "AZURE_RESOURCE_GROUP", group),
            ("workspace", "AZUREML_WORKSPACE_NAME", name)) if not value]
        if missing:
            raise UserError(f"backend: the Azure ML workspace is not named: set {', '.join(missing)}")
        try:
            from azure.ai.ml import MLClient
        except ImportError:
            raise MissingExtraError("azure-ai-ml", "azure", "The azure backend") from None
        # a line per token and request at INFO; and DefaultAzureCredential's warning that lists every credential it
        # tried would repeat the one message a user gets (NO_CREDENTIALS)
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
        logging.getLogger("azure.identity").setLevel(logging.ERROR)
        logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)  # about the SDK's own classes
        self.name = str(name)
        self.where = f"workspace {name!r} (resource group {group!r}, subscription {subscription})"
        self.ml = MLClient(credential(settings.credentials_block), subscription, group, name)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """fn(), its Azure errors turned into gymflow's: credentials and a missing workspace are the user's to fix."""
        from azure.core import exceptions as aexc

        try:
            return fn()
        except aexc.ClientAuthenticationError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else ""
            if not detail or detail.startswith("DefaultAzureCredential failed"):  # says nothing the message does not
                raise UserError(NO_CREDENTIALS) from None
            raise UserError(f"{NO_CREDENTIALS} (Azure said: {detail[:300]})") from None
        except aexc.ResourceNotFoundError as exc:
            if "/workspaces/" in str(exc) or "workspace" in str(exc).lower() and "compute" not in str(exc).lower():
                raise UserError(f"backend.workspace: {self.where} was not found: check backend.subscription_id, "
                                "resource_group and workspace (`az ml workspace list -g GROUP`)") from None
            raise BackendError(f"Azure ML could not {what}: {_message(exc)}") from exc
        except aexc.HttpResponseError as exc:
            if exc.status_code == 403:
                raise UserError(f"backend: the credentials may not {what} in {self.where}: {_message(exc)}. Grant the "
                                "AzureML Data Scientist role (README: Azure ML)") from None
            if exc.status_code in (408, 429) or (exc.status_code or 0) >= 500:
                raise TransientBackendError(f"Azure ML kept failing to {what}: {_message(exc)}") from exc
            raise BackendError(f"Azure ML could not {what}: {_message(exc)}") from exc

    def check(self) -> None:
        """The workspace exists and the credentials may read it."""
        self.call("read the workspace", lambda: self.ml.workspaces.get(self.name))

    def ensure_compute(self, s: AzureBackendSpec) -> bool:
        """The cluster s.compute, created (min_nodes, scale-down, tier, a system-assigned identity) when missing;
        whether it existed before."""
        from azure.ai.ml.entities import AmlCompute, IdentityConfiguration
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.call("read the compute cluster", lambda: self.ml.compute.get(s.compute))
            return True
        except BackendError as exc:
            if not isinstance(exc.__cause__, ResourceNotFoundError):
                raise
        cluster = AmlCompute(name=s.compute, size=s.vm_size, min_instances=s.min_nodes, max_instances=s.max_nodes,
                             idle_time_before_scale_down=s.idle_time_before_scale_down_s, tier=s.tier,
                             identity=IdentityConfiguration(type="system_assigned"),
                             tags={MANAGED_TAG: "managed"})
        try:
            self.call("create the compute cluster", lambda: self.ml.compute.begin_create_or_update(cluster).result())
        except BackendError as exc:
            text = _message(exc.__cause__) if exc.__cause__ is not None else str(exc)
            if "quota" in text.lower():
                raise UserError(f"backend.vm_size: no quota for {s.vm_size} ({s.tier}) in {self.where}: {text} Request "
                                "a quota increase for its VM family (Azure portal: Azure Machine Learning > Quotas), or "
                                "choose another vm_size or tier") from None
            raise
        logger.info("compute cluster %s created (%s, %d-%d nodes, %s)", s.compute, s.vm_size, s.min_nodes, s.max_nodes, s.tier)
        return False

    def submit(self, job: Any) -> None:
        self.call(f"submit the job {job.name}", lambda: self.ml.jobs.create_or_update(job))

    def active(self) -> list[JobInfo]:
        """gymflow's jobs that have not ended: one list call (paged)."""
        from azure.ai.ml.constants import ListViewType

        jobs = self.call("list the jobs", lambda: list(self.ml.jobs.list(list_view_type=ListViewType.ACTIVE_ONLY)))
        return [info for info in map(_info, jobs) if info.tags.get(MANAGED_TAG) == "managed"]

    def job(self, name: str) -> JobInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return _info(self.call(f"read the job {name}", lambda: self.ml.jobs.get(name)))
        except BackendError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return None
            raise

    def cancel(self, name: str, wait_s: float = CANCEL_WAIT_S) -> bool:
        """Cancel the job unless it ended; wait until it has. Whether a cancel was sent. Idempotent."""
        info = self.job(name)
        if info is None or info.ended:
            return False
        if info.status != "CancelRequested":
            self.call(f"cancel the job {name}", lambda: self.ml.jobs.begin_cancel(name))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            info = self.job(name)
            if info is None or info.ended:
                return True
            time.sleep(2.0)
        logger.warning("job %s was cancelled but is still %s after %.0f s", name, info.status if info else "?", wait_s)
        return True


def _info(job: Any) -> JobInfo:
    created = getattr(getattr(job, "creation_context", None), "created_at", None)
    error = ""
    props = getattr(job, "properties", None) or {}
    if isinstance(props, dict):
        error = str(props.get("azureml.error", ""))
    status = getattr(job.status, "value", job.status)  # a str enum: its str() is its class and member name
    return JobInfo(name=job.name, status=str(status or "Unknown"), tags=dict(job.tags or {}),
                   created=created.timestamp() if created is not None else 0.0, compute=str(job.compute or ""), error=error)


def _message(exc: BaseException | None) -> str:
    """The service's own message, without azure-core's request dump."""
    if exc is None:
        return ""
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None) or str(exc).splitlines()[0]
    code = getattr(error, "code", None)
    return f"{message} ({code})" if code else str(message)
