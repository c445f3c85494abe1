"""HEP version 3 (Homer's capture protocol): each SIP message copied to a collector, over UDP.

The layout follows the sipcapture project's "HEP3 Network Protocol Specification" (rev. 37, by
Roland Haenel and Alexandr Dubovikov): "HEP3" and the whole packet's length, then chunks, each a
vendor id (0: the generic chunks, the only ones written here), a type id, its length (its 6-byte
head included) and its value, all in network byte order. Chunks go in the order of the
specification's example packet, then the authentication key and the node's name (the capture agent
name, type 0x0013), the payload last.

A copy over TLS or WebSocket carries the message as the registrar read or wrote it, decrypted and
unframed, under IP protocol TCP (what those run on). Only UDP is built, not HEP over TCP: a copy
the collector cannot take at once is dropped, never queued, retried or waited for.
"""

from __future__ import annotations

import socket
import struct

from registrar.sip.source import STREAM_TRANSPORTS
from registrar.sip.trace import Captured, ip_ends
from registrar.sip.uri import URIError, split_hostport, unbracketed

# Generic chunk types (vendor 0).
FAMILY, PROTOCOL, IPV4_SOURCE, IPV4_DESTINATION, IPV6_SOURCE, IPV6_DESTINATION = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
SOURCE_PORT, DESTINATION_PORT, SECONDS, MICROSECONDS = 0x07, 0x08, 0x09, 0x0A
PROTOCOL_TYPE, CAPTURE_ID, AUTHENTICATION_KEY, PAYLOAD, NODE_NAME = 0x0B, 0x0C, 0x0E, 0x0F, 0x13
# Linux's AF_INET and AF_INET6, as collectors read them whatever the sender's platform numbers them.
_FAMILIES = {4: 2, 6: 10}
_SIP = 1
_HEADER = 6  # "HEP3" and the length
_CHUNK_HEAD = 6  # vendor, type, length


def collector_address(text: str) -> tuple[str, int]:
    """A collector given as HOST:PORT ([IPv6]:PORT); ValueError says what is wrong (resolving waits for HepSender)."""
    try:
        host, port = split_hostport(text)
    except URIError:
        port = None
    if port is None:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return unbracketed(host), port


def capture_id(text: str) -> int:
    """A capture agent id given as text; ValueError unless it is a 32-bit unsigned number."""
    if not text.strip().isdigit() or not 0 <= int(text) <= 0xFFFFFFFF:
        raise ValueError(f"not a capture id from 0 to 4294967295: {text!r}")
    return int(text)


def encode(captured: Captured, capture_id: int, password: str | None = None) -> bytes:
    """The HEP3 packet of one message; ValueError if it is more than a HEP packet holds (65535 bytes)."""
    source, destination = ip_ends(captured)
    seconds, microseconds = captured.timestamp
    v4 = source.version == 4
    protocol = socket.IPPROTO_TCP if captured.transport in STREAM_TRANSPORTS else socket.IPPROTO_UDP
    fields = [
        (FAMILY, struct.pack("!B", _FAMILIES[source.version])),
        (PROTOCOL, struct.pack("!B", protocol)),
        (IPV4_SOURCE if v4 else IPV6_SOURCE, source.packed),
        (IPV4_DESTINATION if v4 else IPV6_DESTINATION, destination.packed),
        (SOURCE_PORT, struct.pack("!H", captured.source[1])),
        (DESTINATION_PORT, struct.pack("!H", captured.destination[1])),
        (SECONDS, struct.pack("!I", seconds)),
        (MICROSECONDS, struct.pack("!I", microseconds)),
        (PROTOCOL_TYPE, struct.pack("!B", _SIP)),
        (CAPTURE_ID, struct.pack("!I", capture_id)),
    ]
    if password is not None:
        fields.append((AUTHENTICATION_KEY, password.encode()))
    if captured.node:
        fields.append((NODE_NAME, captured.node.encode()))
    fields.append((PAYLOAD, captured.data))
    length = _HEADER + sum(_CHUNK_HEAD + len(value) for _, value in fields)
    if length > 0xFFFF:
        raise ValueError(f"a {len(captured.data)}-byte message is more than one HEP packet holds")
    return b"HEP3" + struct.pack("!H", length) + b"".join(
        struct.pack("!HHH", 0, type_id, _CHUNK_HEAD + len(value)) + value for type_id, value in fields
    )


class HepSender:
    """Copies messages to one HEP collector over UDP, never blocking or failing the SIP handling that calls it.

    A copy the socket cannot take at once (its buffer full), one the kernel refuses (the collector's
    port closed, said by ICMP on a later send) and one too large for HEP are dropped and counted.
    """

    def __init__(self, address: tuple[str, int], capture_id: int, password: str | None = None) -> None:
        host, port = address
        if not 0 <= capture_id <= 0xFFFFFFFF:
            raise ValueError(f"a HEP capture id is a 32-bit unsigned number, not {capture_id}")
        try:
            family, kind, protocol, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as error:
            raise ValueError(f"the HEP collector {host!r} does not resolve: {error.strerror}") from None
        self._socket = socket.socket(family, kind, protocol)
        self._socket.setblocking(False)
        try:
            # Sends nothing: fixes the peer once, so no send looks a name or route up again, and
            # lets the kernel tell a later send that the collector's port is closed (ECONNREFUSED).
            self._socket.connect(sockaddr)
        except OSError as error:
            self._socket.close()
            raise ValueError(f"the HEP collector {host}:{port} cannot be reached: {error.strerror}") from None
        self._capture_id = capture_id
        self._password = password
        self.sent = 0
        self.dropped = 0

    def send(self, captured: Captured) -> bool:
        """Sends one copy now (True), or drops it (False)."""
        try:
            self._socket.send(encode(captured, self._capture_id, self._password))
        except (OSError, ValueError, struct.error):  # struct.error: a field out of its range
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._socket.close()
