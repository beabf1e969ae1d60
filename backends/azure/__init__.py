"""The azure backend: each trial a command job on an Azure ML compute cluster (see backend.py)."""

from backends.azure.backend import AzureBackend

__all__ = ["AzureBackend"]
