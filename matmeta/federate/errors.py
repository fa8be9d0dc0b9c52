"""The federation's user-facing error (kept apart so the transport and the process runner share it)."""

from __future__ import annotations

from matmeta.errors import MatmetaError


class FederationError(MatmetaError):
    """A federation could not run (a lab process failed, no lab connected, ...)."""
