"""A run directory on Azure Blob Storage: ``az://account/container/prefix``.

The storage account is named in the URI. Credentials: ``AZURE_STORAGE_CONNECTION_STRING`` when
set (its account must be the URI's), else DefaultAzureCredential against
``https://ACCOUNT.blob.core.windows.net``. azure-core's retry policy retries transient errors
(408, 429, 5xx, timeouts, dropped connections) with exponential backoff on every call (see _retry).
"""

from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from typing import Any

from gymflow.errors import MissingExtraError, StorageError, UserError, excerpt
from gymflow.storage.remote import CREATE_HINT, RemoteRunStore

logger = logging.getLogger(__name__)

CONNECTION_ENV = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_RE = re.compile(r"[a-z0-9]{3,24}")
CONTAINER_RE = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")


def _sdk() -> tuple[Any, Any]:
    try:
        from azure.core import exceptions
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        raise MissingExtraError("azure-storage-blob", "azure", "An az:// run directory") from None
    # azure-core logs every request and response at INFO: in a worker at INFO that would flood worker.log (and be
    # published with it at each heartbeat). Its warnings still come through.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    return BlobServiceClient, exceptions


def split(uri: str) -> tuple[str, str, str]:
    """az://account/container/a/b -> ('account', 'container', 'a/b'); a UserError when a name cannot be one."""
    parts = uri.removeprefix("az://").split("/", 2)
    account, container = parts[0], parts[1] if len(parts) > 1 else ""
    if not ACCOUNT_RE.fullmatch(account):
        raise UserError(f"{excerpt(uri)}: {excerpt(account)} is not a storage account name: 3-24 lowercase letters and "
                        "digits (az://ACCOUNT/CONTAINER/PREFIX)")
    if not CONTAINER_RE.fullmatch(container):
        raise UserError(f"{excerpt(uri)}: {excerpt(container)} is not a container name: 3-63 lowercase letters, digits "
                        "and single '-' (az://ACCOUNT/CONTAINER/PREFIX)")
    return account, container, (parts[2] if len(parts) > 2 else "").strip("/")


def _retry() -> Any:
    """Backoff of about 1, 3, 5, 9, 17, 33 s: the SDK's default starts at 15 s, long for a worker's heartbeat."""
    from azure.storage.blob import ExponentialRetry

    return ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=6, random_jitter_range=1)


@lru_cache(maxsize=8)
def _service(account: str, connection: str | None) -> Any:
    service_cls, _ = _sdk()
    if connection:
        service = service_cls.from_connection_string(connection, retry_policy=_retry())
        if service.account_name != account:
            raise UserError(f"{CONNECTION_ENV} is for the account {service.account_name!r}, the URI names {account!r}: "
                            "use one account")
        return service
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise MissingExtraError("azure-identity", "azure", "An az:// run directory without a connection string") from None
    return service_cls(f"https://{account}.blob.core.windows.net", credential=DefaultAzureCredential(),
                       retry_policy=_retry())


class AzureRunStore(RemoteRunStore):
    """A run dir under az://account/container/prefix."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.account, self.container_name, self.prefix = split(self.uri)
        _, self._errors = _sdk()
        self._container = _service(self.account, os.environ.get(CONNECTION_ENV)).get_container_client(self.container_name)

    def _call(self, what: str, rel: str, fn: Any) -> Any:
        """Run fn, turning the service's answers into errors that say what to do."""
        errors = self._errors
        try:
            return fn()
        except errors.ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise UserError(self.missing_root()) from None
            raise FileNotFoundError(f"{self.uri}/{rel}") from None
        except errors.ClientAuthenticationError as exc:
            raise UserError(f"{what} {self.uri}/{rel} was refused: the credentials are not valid for the storage "
                            f"account {self.account!r} ({exc.reason or exc}); check {CONNECTION_ENV} or `az login`") from None
        except errors.HttpResponseError as exc:
            code = getattr(exc.error_code, "value", exc.error_code) or ""
            if exc.status_code == 403 and (code == "AuthenticationFailed" or "authenticate" in (exc.reason or "").lower()):
                raise UserError(f"{what} {self.uri}/{rel} was refused (403): the request's signature does not match "
                                f"the storage account {self.account!r}; check the account key in {CONNECTION_ENV}, "
                                "or `az login`") from None
            if exc.status_code == 403 and "SharedAccessSignature=" in (os.environ.get(CONNECTION_ENV) or ""):
                raise UserError(f"{what} {self.uri}/{rel} was denied (403): the shared access signature in "
                                f"{CONNECTION_ENV} does not allow it; make one with read, add, create, write, delete and "
                                "list permissions on the container (or use the account key or `az login`)") from None
            if exc.status_code == 403:
                raise UserError(f"{what} {self.uri}/{rel} was denied (403): the identity in use needs the role "
                                f"'Storage Blob Data Contributor' on the storage account {self.account!r}") from None
            raise StorageError(f"{what} {self.uri}/{rel} failed: {exc.status_code} {exc.reason}", exc.status_code) from exc

    def missing_root(self) -> str:
        return (f"the container {self.container_name!r} does not exist in the storage account {self.account!r}: create "
                f"it (az storage container create --name {self.container_name} --account-name {self.account})"
                f"{CREATE_HINT}")

    @property
    def root_uri(self) -> str:
        return f"az://{self.account}/{self.container_name}"

    def root_exists(self) -> bool:
        return bool(self._call("checking", "", lambda: self._container.exists()))

    def create_root(self) -> bool:
        return self.create_container()

    def create_container(self) -> bool:
        """Create the container if it is missing; True when this call created it."""
        try:
            self._container.create_container()
        except self._errors.ResourceExistsError:
            return False
        return True

    def _exists(self, rel: str) -> bool:
        return bool(self._call("reading", rel, lambda: self._container.get_blob_client(self._key(rel)).exists()))

    def read_bytes(self, rel: str) -> bytes:
        blob = self._container.get_blob_client(self._key(rel))
        return bytes(self._call("reading", rel, lambda: blob.download_blob().readall()))

    def _read_range(self, rel: str, offset: int) -> bytes:
        blob = self._container.get_blob_client(self._key(rel))
        return bytes(self._call("reading", rel, lambda: blob.download_blob(offset=offset).readall()))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """One upload of the whole blob: readers see the old content or the new, never a mix."""
        blob = self._container.get_blob_client(self._key(rel))
        self._call("writing", rel, lambda: blob.upload_blob(data, overwrite=True))

    def create_bytes(self, rel: str, data: bytes) -> bool:
        """An upload without overwrite (If-None-Match: *): the service refuses it (409) when the blob exists."""
        blob = self._container.get_blob_client(self._key(rel))

        def call() -> bool:
            try:
                blob.upload_blob(data, overwrite=False)
            except self._errors.ResourceExistsError:
                return False
            return True

        return bool(self._call("writing", rel, call))

    def read_versioned(self, rel: str) -> tuple[bytes, str]:
        blob = self._container.get_blob_client(self._key(rel))

        def call() -> tuple[bytes, str]:
            download = blob.download_blob()
            return bytes(download.readall()), str(download.properties.etag)

        return self._call("reading", rel, call)  # type: ignore[no-any-return]

    def replace_if(self, rel: str, data: bytes, version: str) -> bool:
        return self._conditional("writing", rel, lambda blob, match: blob.upload_blob(
            data, overwrite=True, etag=version, match_condition=match))

    def _conditional(self, what: str, rel: str, fn: Any) -> bool:
        """fn(blob, IfNotModified) under the blob's ETag: False when the service says it no longer holds (412, 404)."""
        from azure.core import MatchConditions

        blob = self._container.get_blob_client(self._key(rel))

        def call() -> bool:
            try:
                fn(blob, MatchConditions.IfNotModified)
            except self._errors.ResourceModifiedError:
                return False
            except self._errors.ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) == "ContainerNotFound":
                    raise
                return False
            return True

        return bool(self._call(what, rel, call))

    def _names(self, prefix: str) -> list[str]:
        return self._relative(self._call("listing", prefix, lambda: [
            b.name for b in self._container.list_blobs(name_starts_with=self._listing(prefix))]))

    def delete(self, rel: str) -> None:
        blob = self._container.get_blob_client(self._key(rel))
        try:
            self._call("deleting", rel, lambda: blob.delete_blob())
        except FileNotFoundError:
            pass

