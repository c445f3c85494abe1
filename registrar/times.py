"""Times as the registrar shows them: Unix seconds as RFC 3339 text, for the HTTP API and Kubernetes status."""

from __future__ import annotations

from datetime import datetime, timezone


def rfc3339(seconds: float) -> str:
    """Unix seconds as an RFC 3339 UTC time to the second, as Kubernetes writes times ("...Z")."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def unix_seconds(text: str) -> float:
    """An RFC 3339 time, as rfc3339 writes it or with a numeric offset, as Unix seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
