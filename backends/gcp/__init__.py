"""The gcp backend: one Compute Engine VM per trial (see backend.py)."""

from backends.gcp.backend import GcpBackend

__all__ = ["GcpBackend"]
