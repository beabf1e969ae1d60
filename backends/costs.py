"""What the cloud backends' cost notes share: money as `gymflow validate` prints it."""

from __future__ import annotations


def money(usd: float) -> str:
    return f"${usd:,.2f}" if usd >= 0.01 else "<$0.01"
