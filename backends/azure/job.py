"""The command a trial's Azure ML job runs: make sure the worker can run, then start its agent on the run dir.

As on a Google Cloud VM (backends/gcp/startup.py), nothing is installed that is already there: gymflow's own
wheel (the exact code the orchestrator runs) only when the environment lacks that build, and the user's
`packages` through pip. The wheel is read from blob storage as the job's identity (the cluster's managed
identity: DefaultAzureCredential), with azure-storage-blob, installed first if the image lacks it. The job's
output is its std_log.txt in the studio; when a step fails before the worker starts, the output so far is also
written to the run dir (OUTPUT), where the train task shows its end.
"""

from __future__ import annotations

import shlex

from backends.azure.settings import AzureBackendSpec

OUTPUT = "job-output.log"  # in the run dir: the job's output up to a failure before the worker started

SCRIPT = """set -uo pipefail
PY="$(command -v python3 || command -v python)"
RUN_URI=@RUN_URI@
LOG="$(mktemp)"
exec > >(tee -a "$LOG") 2>&1
say() { echo "gymflow-job: $*"; }
fail() {  # the output so far to the run dir, where the orchestrator shows it (when this environment can write there)
  say "FAILED: $*"
  sleep 1
  [ -n "$PY" ] && "$PY" - "$RUN_URI/@OUTPUT@" "$LOG" <<'PYTHON' >/dev/null 2>&1
import sys
@BLOB@
with open(sys.argv[2], "rb") as log:
    blob(sys.argv[1]).upload_blob(log.read(), overwrite=True)
PYTHON
  exit 1
}
[ -n "$PY" ] || fail "no python in the job's environment: backend.image (or backend.environment) needs Python 3.10+"
@INSTALL@
"$PY" -c "import gymflow" 2>/dev/null || fail "gymflow does not import in this environment: $("$PY" -c 'import gymflow' 2>&1 | tail -1)"
say "gymflow $("$PY" -c 'import gymflow; print(gymflow.__version__)') ready; starting the agent on $RUN_URI"
exec "$PY" -m gymflow worker agent "$RUN_URI" --poll-s @POLL_S@
"""

# a blob client for an az:// URI, as the job's identity (or Azurite's connection string in tests)
BLOB = """import os
from azure.storage.blob import BlobClient
def blob(uri):
    account, container, name = uri[len("az://"):].split("/", 2)
    connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        return BlobClient.from_connection_string(connection, container, name)
    from azure.identity import DefaultAzureCredential
    return BlobClient(f"https://{account}.blob.core.windows.net", container, name, credential=DefaultAzureCredential())"""

FETCH = """"$PY" -c "import azure.storage.blob, azure.identity" 2>/dev/null || "$PY" -m pip install --quiet --disable-pip-version-check azure-storage-blob azure-identity || fail "pip could not install azure-storage-blob to download gymflow's wheel"
"$PY" - @URI@ "$where/@FILENAME@" <<'PYTHON' || fail "could not download @URI@: the cluster's identity needs Storage Blob Data Reader on the account"
import sys
@BLOB@
with open(sys.argv[2], "wb") as file:
    file.write(blob(sys.argv[1]).download_blob().readall())
PYTHON
"""

INSTALL = """if "$PY" -c "import sys, gymflow._build as b; sys.exit(b.BUILD != '@BUILD@')" 2>/dev/null; then
  say "gymflow build @BUILD@ is installed already"
else
  say "installing gymflow build @BUILD@ from @URI@"
  where="$(mktemp -d)"
@FETCH@  "$PY" -m pip install --quiet --disable-pip-version-check "$where/@FILENAME@[azure]" || fail "pip could not install gymflow from @FILENAME@"
fi
"""

PACKAGES = """say "installing @PACKAGES@"
"$PY" -m pip install --quiet --disable-pip-version-check @QUOTED@ || fail "pip could not install @PACKAGES@"
"""


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key.upper()}@", value)
    return template


def command(settings: AzureBackendSpec, run_uri: str, wheel: tuple[str, str, str] | None = None,
            poll_s: float = 2.0) -> str:
    """The job's command; `wheel`: (az:// URI, file name, build) of gymflow's."""
    install = ""
    if wheel is not None:
        uri, filename, build = wheel
        fetch = _fill(FETCH, uri=shlex.quote(uri), filename=filename, blob=BLOB)
        install += _fill(INSTALL, build=build, uri=shlex.quote(uri), filename=filename, fetch=fetch)
    if settings.packages:
        install += _fill(PACKAGES, packages=" ".join(settings.packages),
                         quoted=" ".join(shlex.quote(p) for p in settings.packages))
    return _fill(SCRIPT, run_uri=shlex.quote(run_uri), install=install, poll_s=str(poll_s), output=OUTPUT, blob=BLOB)
