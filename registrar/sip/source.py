"""Where a message came from: the transport, the packet's address, and the connection it arrived on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Source:
    """Where a request came from: the transport, the packet's address, the connection."""

    transport: str  # "udp", "tcp", "tls"
    host: str
    port: int
    flow: str | None = None  # the connection's id on stream transports

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"
