"""The VM's startup script: make sure the worker can run, then start its agent on the run dir.

Nothing is installed that is already there: gymflow's own wheel (the exact code the orchestrator runs, see
gymflow/shipping.py) only when the image does not have that build (a prepared image skips it), and the user's
`packages` through pip, which leaves requirements that are already met alone; with `gymflow_install:
preinstalled` the script only checks that gymflow imports. The wheel is downloaded with the VM's service
account (a token from the metadata server) and Python's standard library: nothing else is needed on the image.
With `container_image` the VM pulls the image (with Docker, which the default image has) and the same steps run
inside the container, which gets the VM's GPUs and network and finds the wheel in a mounted folder.
The script's output is the VM's serial console, which the train task shows when the worker never starts.
"""

from __future__ import annotations

import shlex

from backends.gcp.settings import GcpBackendSpec

PRELUDE = """set -uo pipefail
PY="$(command -v python3 || command -v python)"
say() {{ echo "gymflow-startup: $*"; }}
fail() {{ say "FAILED: $*"; exit 1; }}
"""

TEMPLATE = """#!/bin/bash
# gymflow {version}: the worker's agent for trial {trial_id}
""" + PRELUDE + """RUN_URI={run_uri}
[ -n "$PY" ] || fail "no python3 on the image; use an image with Python 3.10+ (the default Deep Learning VM image has it)"
{install}
"$PY" -c "import gymflow" 2>/dev/null || fail "gymflow does not import on this image: $("$PY" -c 'import gymflow' 2>&1 | tail -1)"
say "gymflow $("$PY" -c 'import gymflow; print(gymflow.__version__)') ready; starting the agent on $RUN_URI"
exec "$PY" -m gymflow worker agent "$RUN_URI" --poll-s {poll_s}
"""

FETCH = """fetch() {{  # gs://BUCKET/OBJECT to FILE, as the VM's service account, with Python's standard library only
"$PY" - "$1" "$2" <<'PYTHON'
import json, os, sys, urllib.parse, urllib.request
uri, out = sys.argv[1], sys.argv[2]
bucket, _, name = uri[len("gs://"):].partition("/")
host = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
asked = urllib.request.Request(f"http://{{host}}/computeMetadata/v1/instance/service-accounts/default/token",
                               headers={{"Metadata-Flavor": "Google"}})
token = json.load(urllib.request.urlopen(asked, timeout=30))["access_token"]
base = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
base = (base if "://" in base else "http://" + base).rstrip("/")
url = f"{{base}}/storage/v1/b/{{bucket}}/o/{{urllib.parse.quote(name, safe='')}}?alt=media"
with urllib.request.urlopen(urllib.request.Request(url, headers={{"Authorization": f"Bearer {{token}}"}}), timeout=300) as got:
    with open(out, "wb") as file:
        file.write(got.read())
PYTHON
}}
"""

INSTALL = """if "$PY" -c "import sys, gymflow._build as b; sys.exit(b.BUILD != '{build}')" 2>/dev/null; then
  say "gymflow build {build} is installed already"
else
  say "installing gymflow build {build} from {wheel_uri}"
{get}  "$PY" -m pip install --quiet --disable-pip-version-check "$where/{filename}[gcp]" || fail "pip could not install gymflow from {filename}"
fi
"""

DOWNLOAD = """  fetch {wheel_uri} "$where/{filename}" || fail "could not download {wheel_uri}: the VM's service account needs storage.objects.get on the bucket"
"""

# backend.container_image: the VM (its image must have Docker; the default Deep Learning VM image does, with NVIDIA's
# container toolkit) pulls the image and runs the worker's agent in it; the same install steps run inside
CONTAINER = """#!/bin/bash
# gymflow {version}: the worker's agent for trial {trial_id}, in the container {image}
""" + PRELUDE + """IMAGE={image_q}
command -v docker >/dev/null || fail "no docker on the VM image: backend.container_image needs an image with Docker (the default Deep Learning VM image has it)"
where="$(mktemp -d)"
{download}registry="${{IMAGE%%/*}}"
case "$registry" in
  *-docker.pkg.dev|gcr.io|*.gcr.io) command -v gcloud >/dev/null && gcloud auth configure-docker "$registry" --quiet >/dev/null 2>&1 ;;
esac
say "pulling $IMAGE"
docker pull "$IMAGE" >/dev/null || fail "docker could not pull $IMAGE: check backend.container_image, and that the VM's service account may read it (roles/artifactregistry.reader)"
passed=()
for name in GCE_METADATA_HOST GCE_METADATA_IP STORAGE_EMULATOR_HOST; do [ -n "${{!name:-}}" ] && passed+=(-e "$name"); done
say "starting the agent in $IMAGE"
exec docker run --rm --network host {gpus}"${{passed[@]}}" -v "$where:/gymflow-in" "$IMAGE" bash -c {inner}
"""

PACKAGES = """say "installing {packages}"
"$PY" -m pip install --quiet --disable-pip-version-check {quoted} || fail "pip could not install {packages}"
"""


def script(settings: GcpBackendSpec, run_uri: str, trial_id: str, version: str, wheel: tuple[str, str, str] | None = None,
           poll_s: float = 2.0, gpu: bool = False) -> str:
    """The startup-script metadata value for one trial's VM; `wheel`: (gs:// URI, file name, build) of gymflow's;
    `gpu`: the VM has GPUs (a container gets them)."""
    image = settings.container_image
    install = ""
    if wheel is not None:
        uri, filename, build = wheel
        if image:  # downloaded on the VM, installed in the container from the folder it sees as /gymflow-in
            install += INSTALL.format(build=build, wheel_uri=shlex.quote(uri), filename=filename, get='  where=/gymflow-in\n')
        else:
            install += FETCH.format() + INSTALL.format(build=build, wheel_uri=shlex.quote(uri), filename=filename,
                                              get='  where="$(mktemp -d)"\n' +
                                              DOWNLOAD.format(wheel_uri=shlex.quote(uri), filename=filename))
    if settings.packages:
        install += PACKAGES.format(packages=" ".join(settings.packages),
                                  quoted=" ".join(shlex.quote(p) for p in settings.packages))
    agent = TEMPLATE.format(version=version, trial_id=trial_id, run_uri=shlex.quote(run_uri), install=install, poll_s=poll_s)
    if not image:
        return agent
    download = ""
    if wheel is not None:
        uri, filename, _ = wheel
        download = (FETCH.format() + '[ -n "$PY" ] || fail "no python3 on the VM image to download gymflow\'s wheel with"\n'
                    + DOWNLOAD.format(wheel_uri=shlex.quote(uri), filename=filename))
    return CONTAINER.format(
        version=version, trial_id=trial_id, image=image, image_q=shlex.quote(image), download=download, gpus="--gpus all " if gpu else "",
        inner=shlex.quote(agent))
