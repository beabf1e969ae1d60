"""A run directory on Google Cloud Storage: ``gs://bucket/prefix``.

The worker writes under ``workdir`` (a local mirror) and publishes files; readers read the
bucket. Credentials come from Application Default Credentials; ``STORAGE_EMULATOR_HOST``
points the client at an emulator. Transient errors (429, 5xx, timeouts, dropped
connections) are retried with backoff by the client's retry policy, on every call,
uploads included (each upload writes a whole object, so repeating one is harmless).
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

DEFAULT_PROJECT = "gymflow"  # only used where no project can be found (an emulator, anonymous access)


def _sdk() -> tuple[Any, Any, Any]:
    try:
        from google.api_core import exceptions
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY
    except ImportError:
        raise MissingExtraError("google-cloud-storage", "gcp", "A gs:// run directory") from None
    return storage, exceptions, DEFAULT_RETRY


@lru_cache(maxsize=4)
def _client(emulator: str | None) -> Any:
    """One client per process (and emulator address): it holds the HTTP session and credentials."""
    storage, _, _ = _sdk()
    if emulator:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", DEFAULT_PROJECT),
                              credentials=AnonymousCredentials())
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return storage.Client()
    except DefaultCredentialsError:
        raise UserError("no Google Cloud credentials for gs:// storage: run `gcloud auth application-default login`, "
                        "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file") from None


BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]")


def split(uri: str) -> tuple[str, str]:
    """gs://bucket/a/b -> ('bucket', 'a/b'); a UserError when the bucket name cannot be one."""
    rest = uri.removeprefix("gs://")
    bucket, _, prefix = rest.partition("/")
    if not BUCKET_RE.fullmatch(bucket):
        raise UserError(f"{excerpt(uri)}: {excerpt(bucket)} is not a bucket name: 3-63 lowercase letters, digits, '-', "
                        "'_' and '.' (up to 222 with dots), starting and ending with a letter or digit (gs://BUCKET/PREFIX)")
    return bucket, prefix.strip("/")


class GcsRunStore(RemoteRunStore):
    """A run dir under gs://bucket/prefix."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.bucket_name, self.prefix = split(self.uri)
        _, self._errors, self._retry = _sdk()
        self._bucket = _client(os.environ.get("STORAGE_EMULATOR_HOST")).bucket(self.bucket_name)
        self._bucket_seen = False  # a 404 asks once whether the bucket itself is missing

    def _call(self, what: str, rel: str, fn: Any) -> Any:
        """Run fn, turning the service's answers into errors that say what to do."""
        try:
            return fn()
        except self._errors.NotFound:
            if not self._bucket_seen and not self.bucket_exists():
                raise UserError(self.missing_root()) from None
            raise FileNotFoundError(f"{self.uri}/{rel}") from None
        except self._errors.Forbidden as exc:
            raise UserError(f"{what} gs://{self.bucket_name}/{self._key(rel)} was denied ({exc.code}): the account "
                            f"{self._account()} needs the role roles/storage.objectAdmin on the bucket") from None
        except self._errors.GoogleAPICallError as exc:
            raise StorageError(f"{what} gs://{self.bucket_name}/{self._key(rel)} failed: {exc}", exc.code) from exc

    def _account(self) -> str:
        credentials = getattr(self._bucket.client, "_credentials", None)
        return getattr(credentials, "service_account_email", None) or "in use (Application Default Credentials)"

    def missing_root(self) -> str:
        return (f"the bucket {self.bucket_name!r} does not exist: create it (gcloud storage buckets create "
                f"gs://{self.bucket_name}){CREATE_HINT}")

    @property
    def root_uri(self) -> str:
        return f"gs://{self.bucket_name}"

    def root_exists(self) -> bool:
        return self.bucket_exists()

    def create_root(self) -> bool:
        return self.create_bucket()

    def bucket_exists(self) -> bool:
        try:
            self._bucket_seen = bool(self._bucket.exists(retry=self._retry))
        except self._errors.Forbidden:
            self._bucket_seen = True  # it exists; we may not look at it
        return self._bucket_seen

    def create_bucket(self, location: str | None = None) -> bool:
        """Create the bucket if it is missing; True when this call created it."""
        if self.bucket_exists():
            return False
        try:
            self._bucket.client.create_bucket(self.bucket_name, location=location, retry=self._retry)
        except self._errors.Conflict:
            return False  # created meanwhile
        return True

    def _exists(self, rel: str) -> bool:
        return bool(self._call("reading", rel, lambda: self._bucket.blob(self._key(rel)).exists(retry=self._retry)))

    def read_bytes(self, rel: str) -> bytes:
        blob = self._bucket.blob(self._key(rel))
        return bytes(self._call("reading", rel, lambda: blob.download_as_bytes(retry=self._retry)))

    def _read_range(self, rel: str, offset: int) -> bytes:
        blob = self._bucket.blob(self._key(rel))
        return bytes(self._call("reading", rel, lambda: blob.download_as_bytes(start=offset, retry=self._retry)))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """One upload: readers see the old object or the new one, never a mix."""
        blob = self._bucket.blob(self._key(rel))
        self._call("writing", rel, lambda: blob.upload_from_string(data, retry=self._retry))

    def create_bytes(self, rel: str, data: bytes) -> bool:
        """An upload with ifGenerationMatch=0: the service refuses it (412) when the object exists."""
        return self._conditional("writing", rel, lambda blob: blob.upload_from_string(
            data, if_generation_match=0, retry=self._retry))

    def read_versioned(self, rel: str) -> tuple[bytes, str]:
        blob = self._bucket.blob(self._key(rel))
        data = bytes(self._call("reading", rel, lambda: blob.download_as_bytes(retry=self._retry)))
        return data, str(blob.generation)

    def replace_if(self, rel: str, data: bytes, version: str) -> bool:
        return self._conditional("writing", rel, lambda blob: blob.upload_from_string(
            data, if_generation_match=int(version), retry=self._retry))

    def _conditional(self, what: str, rel: str, fn: Any) -> bool:
        """fn(blob) under a generation precondition: False when the service says it no longer holds (412, 404)."""
        blob = self._bucket.blob(self._key(rel))

        def call() -> bool:
            try:
                fn(blob)
            except self._errors.PreconditionFailed:
                return False
            return True

        try:
            return bool(self._call(what, rel, call))
        except FileNotFoundError:
            return False

    def _names(self, prefix: str) -> list[str]:
        blobs = self._call("listing", prefix, lambda: list(self._bucket.client.list_blobs(
            self.bucket_name, prefix=self._listing(prefix), retry=self._retry)))
        return self._relative([b.name for b in blobs])

    def delete(self, rel: str) -> None:
        blob = self._bucket.blob(self._key(rel))
        try:
            self._call("deleting", rel, lambda: blob.delete(retry=self._retry))
        except FileNotFoundError:
            pass

