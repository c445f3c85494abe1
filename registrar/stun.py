"""STUN Binding on the SIP UDP port (RFC 5389, as RFC 5626 4.4.2 keep-alives use it): the request read, the answer made.

Pure: bytes in, bytes (or nothing) out. Only what a keep-alive needs: a
Binding request is answered with the address it came from (XOR-MAPPED-ADDRESS),
and a FINGERPRINT when the request had one (RFC 5389 7.3.1). No credentials
(MESSAGE-INTEGRITY is not checked: section 10 lets a server that keeps no STUN
state go without), no other method. What is not a valid STUN request is dropped
unanswered (section 7.3); a request with an attribute we must understand and do
not gets 420 with UNKNOWN-ATTRIBUTES (section 7.3.1).

SIP and STUN share the port: a STUN message starts with two zero bits, which no
SIP message does (its first byte is a letter), and carries the magic cookie.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from enum import Enum

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")  # type, length (after the header), magic cookie, transaction ID
ATTRIBUTE_HEADER = struct.Struct("!HH")  # type, length (before padding to 4 bytes)

BINDING_REQUEST = 0x0001
BINDING_INDICATION = 0x0011
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

XOR_MAPPED_ADDRESS = 0x0020
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
# Comprehension-required attributes (below 0x8000) that RFC 5389 defines: read past, as
# a server without STUN credentials may (section 10). Any other one gets a 420.
_UNDERSTOOD = frozenset({
    0x0001,  # MAPPED-ADDRESS
    0x0006,  # USERNAME
    0x0008,  # MESSAGE-INTEGRITY
    ERROR_CODE,
    UNKNOWN_ATTRIBUTES,
    0x0014,  # REALM
    0x0015,  # NONCE
    XOR_MAPPED_ADDRESS,
})
MAX_UNKNOWN_LISTED = 8  # what a 420 names: bounded, as the request is hostile


class Verdict(Enum):
    """What became of a datagram that looked like STUN, for the metrics."""

    ANSWERED = "answered"  # a Binding success response went back
    UNKNOWN_ATTRIBUTE = "unknown_attribute"  # a 420 went back
    INDICATION = "indication"  # a Binding indication: a keep-alive that wants no answer
    MALFORMED = "malformed"  # dropped (section 7.3: silently)


def looks_like_stun(data: bytes) -> bool:
    """Whether a datagram on the SIP port is STUN's rather than SIP's (RFC 5626 5.4, RFC 7983's first-byte rule)."""
    return len(data) >= HEADER.size and data[0] < 0x40 and data[4:8] == b"\x21\x12\xa4\x42"


def answer(data: bytes, host: str, port: int) -> tuple[Verdict, bytes | None]:
    """The answer to a STUN datagram from host:port, if it gets one."""
    kind, length, cookie, transaction_id = HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE or length != len(data) - HEADER.size or length % 4:
        return Verdict.MALFORMED, None
    attributes = _attributes(data)
    if attributes is None:
        return Verdict.MALFORMED, None
    if kind == BINDING_INDICATION:
        return Verdict.INDICATION, None
    if kind != BINDING_REQUEST:
        return Verdict.MALFORMED, None  # another method, or a response: nothing we asked
    fingerprinted = bool(attributes) and attributes[-1][0] == FINGERPRINT
    unknown = [attribute for attribute, _ in attributes if attribute < 0x8000 and attribute not in _UNDERSTOOD]
    if unknown:
        listed = b"".join(struct.pack("!H", attribute) for attribute in unknown[:MAX_UNKNOWN_LISTED])
        body = _attribute(ERROR_CODE, struct.pack("!HBB", 0, 4, 20) + b"Unknown Attribute")
        body += _attribute(UNKNOWN_ATTRIBUTES, listed)
        return Verdict.UNKNOWN_ATTRIBUTE, _message(BINDING_ERROR, transaction_id, body, fingerprinted)
    body = _attribute(XOR_MAPPED_ADDRESS, xor_mapped_address(host, port, transaction_id))
    return Verdict.ANSWERED, _message(BINDING_SUCCESS, transaction_id, body, fingerprinted)


def xor_mapped_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS value for host:port (RFC 5389 15.2)."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    family, mask = (1, MAGIC_COOKIE) if address.version == 4 else (2, MAGIC_COOKIE << 96 | int.from_bytes(transaction_id, "big"))
    size = 4 if address.version == 4 else 16
    xored = (int(address) ^ mask).to_bytes(size, "big")
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored


def fingerprint(message: bytes) -> int:
    """The FINGERPRINT of `message` (its header's length already counting the FINGERPRINT attribute)."""
    return zlib.crc32(message) ^ FINGERPRINT_XOR


def _attributes(data: bytes) -> list[tuple[int, bytes]] | None:
    """The attributes in order; None when they do not fill the message exactly or a FINGERPRINT is wrong."""
    attributes = []
    position = HEADER.size
    while position < len(data):
        if position + ATTRIBUTE_HEADER.size > len(data):
            return None
        kind, length = ATTRIBUTE_HEADER.unpack_from(data, position)
        start = position + ATTRIBUTE_HEADER.size
        end = start + length
        if end > len(data):
            return None
        if kind == FINGERPRINT:
            # The last attribute when present (section 15.5), over everything before it.
            if length != 4 or end != len(data) or struct.unpack_from("!I", data, start)[0] != fingerprint(data[:position]):
                return None
        attributes.append((kind, data[start:end]))
        position = end + (-length % 4)
    return attributes if position == len(data) else None


def _attribute(kind: int, value: bytes) -> bytes:
    return ATTRIBUTE_HEADER.pack(kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def _message(kind: int, transaction_id: bytes, body: bytes, fingerprinted: bool) -> bytes:
    if not fingerprinted:
        return HEADER.pack(kind, len(body), MAGIC_COOKIE, transaction_id) + body
    head = HEADER.pack(kind, len(body) + 8, MAGIC_COOKIE, transaction_id) + body
    return head + _attribute(FINGERPRINT, struct.pack("!I", fingerprint(head)))
