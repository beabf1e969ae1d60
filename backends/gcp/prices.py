"""What a gcp trial costs, estimated from a small table of Compute Engine list prices shipped with gymflow.

The table is dated (AS_OF) and covers one region (REGION); Google changes prices, spot prices move up to once a
month, other regions cost a little more or less, and discounts (committed use, negotiated) are not in it. It is
an estimate for deciding, not a bill: the Cloud Billing console has the real figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.costs import money

__all__ = ["hourly", "money", "Estimate"]

AS_OF = "2026-11"
REGION = "us-central1"
SOURCE = "https://cloud.google.com/compute/vm-instance-pricing"

# USD per hour in REGION: (on demand, spot). g2/a2/a3 prices include the GPUs these machine types carry.
MACHINES: dict[str, tuple[float, float]] = {
    "e2-standard-2": (0.067, 0.020),
    "e2-standard-4": (0.134, 0.040),
    "e2-standard-8": (0.268, 0.080),
    "n1-standard-2": (0.095, 0.020),
    "n1-standard-4": (0.190, 0.040),
    "n1-standard-8": (0.380, 0.080),
    "n1-standard-16": (0.760, 0.160),
    "n2-standard-4": (0.194, 0.047),
    "n2-standard-8": (0.388, 0.094),
    "c2-standard-8": (0.418, 0.101),
    "g2-standard-4": (0.707, 0.283),
    "g2-standard-8": (0.854, 0.342),
    "g2-standard-12": (1.001, 0.400),
    "g2-standard-16": (1.148, 0.459),
    "g2-standard-24": (2.002, 0.801),
    "g2-standard-32": (1.737, 0.695),
    "g2-standard-48": (4.005, 1.602),
    "g2-standard-96": (8.009, 3.204),
    "a2-highgpu-1g": (3.673, 1.469),
    "a2-highgpu-2g": (7.347, 2.939),
    "a2-highgpu-4g": (14.694, 5.878),
    "a2-highgpu-8g": (29.387, 11.755),
    "a2-ultragpu-1g": (5.069, 2.028),
    "a3-highgpu-8g": (88.490, 35.396),
}
# USD per hour per GPU attached to an n1 machine type: (on demand, spot)
ACCELERATORS: dict[str, tuple[float, float]] = {
    "nvidia-tesla-t4": (0.350, 0.140),
    "nvidia-tesla-p4": (0.600, 0.240),
    "nvidia-tesla-v100": (2.480, 0.992),
    "nvidia-tesla-p100": (1.460, 0.584),
}
DISK_GB_MONTH = 0.10  # balanced persistent disk, USD per GB and month
HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class Estimate:
    """USD per hour of one VM, or why there is none."""

    per_hour: float | None
    missing: str | None = None


def hourly(machine_type: str, accelerator_type: str | None, accelerator_count: int, spot: bool,
           boot_disk_gb: int) -> Estimate:
    """One VM's price per hour: machine, attached GPUs and boot disk."""
    pick = 1 if spot else 0
    if machine_type not in MACHINES:
        return Estimate(None, f"machine type {machine_type!r}")
    total = MACHINES[machine_type][pick] + boot_disk_gb * DISK_GB_MONTH / HOURS_PER_MONTH
    if accelerator_type:
        if accelerator_type not in ACCELERATORS:
            return Estimate(None, f"accelerator type {accelerator_type!r}")
        total += ACCELERATORS[accelerator_type][pick] * accelerator_count
    return Estimate(total)
