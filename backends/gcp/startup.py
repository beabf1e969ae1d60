"""The VM's startup script: make sure the worker can run, then start its agent on the run dir.

Nothing is installed that is already there: with `gymflow_install: preinstalled` (an image with gymflow) the
script only checks that gymflow imports; the user's `packages` go through pip, which leaves requirements that
are already met alone. The script's output is the VM's serial console, which the train task shows when the
worker never starts.
"""

from __future__ import annotations

import shlex

from backends.gcp.settings import GcpBackendSpec

TEMPLATE = """#!/bin/bash
# gymflow {version}: the worker's agent for trial {trial_id}
set -uo pipefail
RUN_URI={run_uri}
PY="$(command -v python3 || command -v python)"
say() {{ echo "gymflow-startup: $*"; }}
fail() {{ say "FAILED: $*"; exit 1; }}
[ -n "$PY" ] || fail "no python3 on the image; use an image with Python 3.10+ (the default Deep Learning VM image has it)"
{install}
"$PY" -c "import gymflow" 2>/dev/null || fail "gymflow does not import on this image: $("$PY" -c 'import gymflow' 2>&1 | tail -1)"
say "gymflow $("$PY" -c 'import gymflow; print(gymflow.__version__)') ready; starting the agent on $RUN_URI"
exec "$PY" -m gymflow worker agent "$RUN_URI" --poll-s {poll_s}
"""

PACKAGES = """say "installing {packages}"
"$PY" -m pip install --quiet --disable-pip-version-check {quoted} || fail "pip could not install {packages}"
"""


def script(settings: GcpBackendSpec, run_uri: str, trial_id: str, version: str, poll_s: float = 2.0) -> str:
    """The startup-script metadata value for one trial's VM."""
    install = ""
    if settings.packages:
        install = PACKAGES.format(packages=" ".join(settings.packages),
                                  quoted=" ".join(shlex.quote(p) for p in settings.packages))
    return TEMPLATE.format(version=version, trial_id=trial_id, run_uri=shlex.quote(run_uri), install=install, poll_s=poll_s)
