"""What an azure trial costs, estimated from a small table of Azure VM list prices shipped with gymflow.

Azure ML compute clusters bill the VMs' price (no Azure ML surcharge). The table is dated (AS_OF) and covers one
region (REGION), Linux pay-as-you-go; low-priority prices move with demand (here about a fifth of the dedicated
price), other regions differ, reservations and savings plans are not in it. An estimate for deciding, not a bill:
Cost Management in the Azure portal has the real figures.
"""

from __future__ import annotations

from backends.costs import money

__all__ = ["AS_OF", "REGION", "SOURCE", "SIZES", "hourly", "money"]

AS_OF = "2026-11"
REGION = "eastus"
SOURCE = "https://azure.microsoft.com/pricing/details/machine-learning/"
LOW_PRIORITY_SHARE = 0.2  # what a low-priority node costs against a dedicated one, as listed in REGION

# USD per hour of a dedicated node in REGION; the N-series carry their GPUs
SIZES: dict[str, float] = {
    "Standard_DS3_v2": 0.293,
    "Standard_D4s_v3": 0.192,
    "Standard_D8s_v3": 0.384,
    "Standard_F4s_v2": 0.169,
    "Standard_F8s_v2": 0.338,
    "Standard_NC4as_T4_v3": 0.526,
    "Standard_NC8as_T4_v3": 0.752,
    "Standard_NC16as_T4_v3": 1.204,
    "Standard_NC64as_T4_v3": 4.352,
    "Standard_NC6s_v3": 3.060,
    "Standard_NC12s_v3": 6.120,
    "Standard_NC24s_v3": 12.240,
    "Standard_NC24ads_A100_v4": 3.673,
    "Standard_NC48ads_A100_v4": 7.346,
    "Standard_NC96ads_A100_v4": 14.692,
    "Standard_ND96asr_v4": 27.197,
    "Standard_NV6ads_A10_v5": 0.454,
    "Standard_NV36ads_A10_v5": 3.200,
}


def hourly(vm_size: str, low_priority: bool) -> float | None:
    """One node's price per hour, or None when the table has no price for the size."""
    if vm_size not in SIZES:
        return None
    return SIZES[vm_size] * (LOW_PRIORITY_SHARE if low_priority else 1.0)
