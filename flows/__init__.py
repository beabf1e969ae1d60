"""Prefect flows: the trial (six phases)."""
