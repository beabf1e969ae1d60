"""The `backend: {kind: azure}` settings: each trial a command job on an Azure ML compute cluster."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gymflow.spec import duration_s

# Microsoft's curated Azure ML image with PyTorch and CUDA (the ACPT image); Python 3.10+, pip
DEFAULT_IMAGE = "mcr.microsoft.com/azureml/curated/acpt-pytorch-2.2-cuda12.1:latest"
_COMPUTE_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,31}$")
_TAG = re.compile(r"^[^<>%&\\?/]{1,512}$")


class AzureBackendSpec(BaseModel):
    """Each trial as a command job on an AmlCompute cluster that scales to zero; the run dir on blob storage
    (`storage: az://ACCOUNT/CONTAINER/...`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["azure"] = Field("azure", description="azure: an Azure ML command job per trial.")
    subscription_id: str | None = Field(None, description="Azure subscription id; default: $AZURE_SUBSCRIPTION_ID.")
    resource_group: str | None = Field(None, description="Resource group of the workspace; default: $AZURE_RESOURCE_GROUP.")
    workspace: str | None = Field(None, description="Azure ML workspace name; default: $AZUREML_WORKSPACE_NAME.")
    compute: str = Field("gymflow-gpu", description="Compute cluster to run on; created (min 0 nodes) when missing, "
                         "never deleted (an existing one is used as it is).")
    vm_size: str = Field("Standard_NC4as_T4_v3", min_length=1, description="VM size of a cluster gymflow creates; "
                         "Standard_N* sizes carry GPUs (NC4as_T4_v3: one NVIDIA T4).")
    min_nodes: int = Field(0, ge=0, description="Nodes kept when idle (0: the cluster scales to zero and costs nothing).")
    max_nodes: int = Field(4, ge=1, description="Most nodes at once: how many trials run in parallel.")
    idle_time_before_scale_down_s: int = Field(120, ge=0, description="How long an idle node waits for the next job "
                                               "before the cluster releases it.")
    tier: Literal["dedicated", "low_priority"] = Field("dedicated", description="low_priority: much cheaper nodes that "
                                                       "Azure may reclaim; the trial resumes in a new job from its newest checkpoint.")
    max_preemptions: int = Field(3, ge=0, description="How many times a preempted trial gets a new job before it fails.")
    environment: str | None = Field(None, description="A registered or curated Azure ML environment to run in "
                                    "(azureml:NAME:VERSION, azureml:NAME@latest, azureml://registries/...); default: "
                                    "`image`.")
    image: str = Field(DEFAULT_IMAGE, min_length=1, description="Docker image the job runs in when `environment` is "
                       "not set; Python 3.10+ and pip on it. The default is Microsoft's curated PyTorch + CUDA image.")
    conda_file: str | None = Field(None, description="A conda environment file to build on `image` (a path, relative "
                                   "to where gymflow runs).")
    experiment_name: str | None = Field(None, description="Azure ML experiment the jobs are grouped under; default: "
                                        "the spec's experiment (its name).")
    job_timeout: str | int = Field("24h", description="Cloud-side limit: Azure ML stops the job after this long "
                                   "whatever happens to the orchestrator (seconds, or e.g. 90m, 6h, 1d).")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra tags on the jobs.")
    packages: list[str] = Field(default_factory=list, description="pip requirements installed in the job before the "
                                "worker starts (your simulator's package, plugins); requirements already met are left alone.")
    gymflow_install: Literal["wheel", "preinstalled"] = Field("wheel", description="wheel: the job installs the exact "
                                                             "gymflow this orchestrator runs (a wheel uploaded next to the run dirs, under .gymflow/wheels/), "
                                                             "unless the image has that build; preinstalled: the environment has gymflow.")
    credentials_block: str | None = Field(None, description="Name of a Prefect AzureMlCredentials block (prefect-azure) "
                                          "to use instead of DefaultAzureCredential.")
    poll_s: float = Field(10.0, gt=0, description="How often the jobs and the worker are checked.")
    startup_grace_s: float = Field(1800.0, gt=0, description="How long a job may queue, start a node, pull its image "
                                   "and start the worker before the trial fails.")
    heartbeat_timeout_s: float = Field(600.0, gt=0, description="Fail the trial when the worker's heartbeat has not "
                                       "advanced for this long.")

    @field_validator("job_timeout")
    @classmethod
    def _timeout(cls, value: str | int) -> str | int:
        if not 60 <= duration_s(value) <= 90 * 86400:
            raise ValueError("job_timeout must be between 1 minute and 90 days")
        return value

    @field_validator("compute")
    @classmethod
    def _compute(cls, value: str) -> str:
        if not _COMPUTE_NAME.match(value):
            raise ValueError("a compute name is 2 to 32 letters, digits and -, starting with a letter")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _TAG.match(key) or key.startswith("gymflow"):
                raise ValueError(f"tag {key!r}: tag names may not contain < > % & \\ ? / and gymflow* names are gymflow's")
        return value

    @property
    def timeout_s(self) -> int:
        return int(duration_s(self.job_timeout))

    def where(self) -> tuple[str | None, str | None, str | None]:
        """(subscription, resource group, workspace): the settings, else the environment's AZURE_* variables."""
        return (self.subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID"),
                self.resource_group or os.environ.get("AZURE_RESOURCE_GROUP"),
                self.workspace or os.environ.get("AZUREML_WORKSPACE_NAME"))
