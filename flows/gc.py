"""The gc flow: `gymflow gc` on a schedule (deployments/prefect.yaml runs it hourly).

Ends the records of trials whose orchestrator died (flow runs Crashed, MLflow runs FAILED, what they provisioned
torn down) and, for a cloud backend, deletes the VMs or jobs gymflow created that no live trial owns.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from gymflow.errors import UserError
from tasks import gc as reaper
from tasks.context import prefect_logger


@flow(name="gc", flow_run_name="gc-{backend}", validate_parameters=True)
def gc(older_than_s: float = 6 * 3600, backend: str | None = None, spec_file: str | None = None,
       dry_run: bool = False) -> list[dict[str, Any]]:
    """Collect what dead trials left behind.

    Args:
        older_than_s: Only what started longer ago than this many seconds.
        backend: Only trials of this backend (local, gcp, azure); a cloud backend's VMs or jobs are looked at too.
        spec_file: A spec whose backend settings (project, endpoint, credentials) say where to look for them.
        dry_run: Only report what would be done.
    """
    log = prefect_logger()
    found = reaper.collect(dry_run=dry_run, older_than_s=older_than_s, backend=backend)
    try:
        cloud = reaper.machines_backend(backend, spec_file)
        found += reaper.machines(dry_run, older_than_s, cloud) if cloud is not None else []
    except UserError as exc:  # e.g. no cloud credentials where this runs: the records were still collected
        log.warning("not looking for %s machines: %s", backend, exc)
    for orphan in found:
        log.info("%s %s (trial %s, %s): %s; %s", orphan.kind, orphan.id, orphan.trial_id, orphan.run_uri, orphan.reason,
                 orphan.action)
    log.info("gc: %d thing(s) %s", len(found), "to collect" if dry_run else "collected")
    return [vars(orphan) for orphan in found]
