"""Where a message came from and where one goes: the transport, the address, the connection; and what counts as one source."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from registrar.sip.uri import bracketed

# The transports we speak, as Via, `transport=` and metrics name them (lower case). The other
# sets are parts of this one: code asks them rather than spelling names out.
TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
# Over a connection: requests to a UA go back down the one it registered over.
STREAM_TRANSPORTS = ("tcp", "tls", "ws", "wss")
# WebSocket (RFC 7118): a connection only the UA can open (a browser listens on nothing),
# carrying one SIP message per WebSocket message.
WEBSOCKET_TRANSPORTS = ("ws", "wss")
# The port a URI or Via without one means (RFC 3261 19.1.2; RFC 7118 section 5.2: HTTP's).
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class Source:
    """Where a request came from: the transport, the packet's address, the connection."""

    transport: str  # one of TRANSPORTS
    host: str
    port: int
    flow: str | None = None  # the connection's id on stream transports

    def __str__(self) -> str:
        return source_text(self.transport, self.host, self.port)

    @property
    def reply_to(self) -> Destination:
        """Where responses go: back where the request came from (RFC 3581 symmetric response routing)."""
        return Destination(self.transport, self.host, self.port, self.flow)


def source_text(transport: str, host: str, port: int) -> str:
    """A source as logs, failure records and people read it: "udp:192.0.2.7:5060", "tls:[2001:db8::1]:5061"."""
    return f"{transport}:{bracketed(host)}:{port}"


class Destination(NamedTuple):
    """Where the transport sends: over UDP to host:port, or down the connection `flow`."""

    transport: str
    host: str
    port: int
    flow: str | None = None


def source_address(host: str) -> str:
    """The address a source is counted by: IPv4 as it is, IPv6 by its /64 (an IPv4-mapped one as IPv4)."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        # A dual-stack socket shows IPv4 peers so: their /64 would be all of IPv4.
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
