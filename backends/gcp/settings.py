"""The `backend: {kind: gcp}` settings: one Compute Engine VM per trial."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gymflow.spec import duration_s

DEFAULT_IMAGE = "projects/deeplearning-platform-release/global/images/family/pytorch-latest-gpu"
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


class GcpBackendSpec(BaseModel):
    """Each trial on its own Compute Engine VM; the run dir on Cloud Storage (`storage: gs://bucket/...`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["gcp"] = Field("gcp", description="gcp: a Compute Engine VM per trial.")
    project: str | None = Field(None, description="Google Cloud project; default: the one of Application Default Credentials.")
    zone: str = Field("us-central1-a", min_length=1, description="Zone to create the VM in first.")
    fallback_zones: list[str] = Field(default_factory=list, description="Zones to try, in order, when the first has no "
                                      "capacity or quota for the VM (ZONE_RESOURCE_POOL_EXHAUSTED, QUOTA_EXCEEDED).")
    machine_type: str = Field("g2-standard-4", min_length=1, description="Machine type; g2 and a2/a3 types carry their "
                              "GPUs (g2-standard-4: one NVIDIA L4), n1 types take `accelerator_type`.")
    accelerator_type: str | None = Field(None, description="GPU to attach to an n1 machine type, e.g. nvidia-tesla-t4.")
    accelerator_count: int = Field(1, ge=1, le=16, description="How many of `accelerator_type` to attach.")
    spot: bool = Field(False, description="Spot VM (provisioningModel SPOT): much cheaper, may be preempted; the trial "
                       "resumes on a new VM from its newest checkpoint.")
    max_preemptions: int = Field(3, ge=0, description="How many times a preempted trial gets a new VM before it fails.")
    boot_disk_gb: int = Field(100, ge=10, le=65536, description="Boot disk size (GB).")
    image: str = Field(DEFAULT_IMAGE, min_length=1, description="Boot image or image family (projects/P/global/images/"
                       "family/F); the default is Google's Deep Learning VM image with a recent PyTorch and CUDA.")
    service_account: str | None = Field(None, description="Service account email the VM runs as (it needs read/write "
                                        "on the bucket only); default: the project's Compute Engine default account.")
    network: str | None = Field(None, description="VPC network; default: the project's `default` network.")
    subnetwork: str | None = Field(None, description="Subnetwork (regions/R/subnetworks/S), for custom-mode networks.")
    external_ip: bool = Field(True, description="Give the VM an external IP (needed to reach PyPI without Cloud NAT).")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on the VM.")
    max_run_duration: str | int = Field("24h", description="Cloud-side limit: Compute Engine deletes the VM after this "
                                        "long whatever happens to the orchestrator (seconds, or e.g. 90m, 6h, 1d).")
    container_image: str | None = Field(None, description="Run the worker in this container image (e.g. "
                                        "us-docker.pkg.dev/P/R/sim:1), pulled by the VM; its image needs Docker (the "
                                        "default has it), the container Python 3.10+ and bash. gymflow_install and "
                                        "packages apply inside it.")
    api_endpoint: str | None = Field(None, description="Compute Engine API endpoint (Private Service Connect; tests).")
    packages: list[str] = Field(default_factory=list, description="pip requirements installed on the VM before the "
                                "worker starts (your simulator's package, plugins; gymflow itself where the image lacks it); "
                                "requirements the image meets already are left alone.")
    gymflow_install: Literal["wheel", "preinstalled"] = Field("wheel", description="wheel: the VM installs the exact "
                                                             "gymflow this orchestrator runs (a wheel uploaded to the bucket, under .gymflow/wheels/), unless the image "
                                                             "has that build already; preinstalled: the image has gymflow, nothing is installed.")
    credentials_block: str | None = Field(None, description="Name of a Prefect GcpCredentials block to use instead of "
                                          "Application Default Credentials.")
    poll_s: float = Field(10.0, gt=0, description="How often the VM and the worker are checked.")
    startup_grace_s: float = Field(900.0, gt=0, description="How long a VM may take to boot, install and start the "
                                   "worker before the trial fails (with the VM's serial console tail).")
    heartbeat_timeout_s: float = Field(600.0, gt=0, description="Fail the trial when the worker's heartbeat has not "
                                       "advanced for this long.")

    @field_validator("max_run_duration")
    @classmethod
    def _duration(cls, value: str | int) -> str | int:
        seconds = duration_s(value)
        if not 60 <= seconds <= 120 * 86400:
            raise ValueError("max_run_duration must be between 1 minute and 120 days (Compute Engine's limits)")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not _LABEL.match(key) or not _LABEL_VALUE.match(val):
                raise ValueError(f"label {key}={val!r}: keys start with a lowercase letter; keys and values use lowercase "
                                 "letters, digits, _ and - (at most 63 characters)")
        return value

    @property
    def zones(self) -> list[str]:
        return [self.zone, *[z for z in self.fallback_zones if z != self.zone]]

    @property
    def run_duration_s(self) -> int:
        return int(duration_s(self.max_run_duration))
