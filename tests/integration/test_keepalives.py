"""NAT keep-alives on the SIP UDP port (RFC 5626 4.4.2): STUN Binding answered for registered phones only."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import zlib

import pytest

from tests.helpers import RunningRegistrar
from tests.integration.sip_client import UserAgent, status_of

pytestmark = pytest.mark.integration

COOKIE = 0x2112A442


def binding_request(transaction_id: bytes, *, fingerprint: bool = False) -> bytes:
    """A Binding request as a phone's keep-alive sends it (RFC 5389 6), built byte by byte."""
    if not fingerprint:
        return struct.pack("!HHI12s", 0x0001, 0, COOKIE, transaction_id)
    head = struct.pack("!HHI12s", 0x0001, 8, COOKIE, transaction_id)
    return head + struct.pack("!HHI", 0x8028, 4, zlib.crc32(head) ^ 0x5354554E)


def mapped_address(response: bytes, transaction_id: bytes) -> tuple[str, int]:
    """The XOR-MAPPED-ADDRESS of a Binding success response, decoded as a client does (RFC 5389 15.2)."""
    kind, length, cookie, echoed = struct.unpack_from("!HHI12s", response)
    assert (kind, cookie, echoed, length) == (0x0101, COOKIE, transaction_id, len(response) - 20)
    attribute, size, _, family, port = struct.unpack_from("!HHBBH", response, 20)
    assert (attribute, size, family) == (0x0020, 8, 1)
    address = struct.unpack_from("!I", response, 28)[0] ^ COOKIE
    return str(ipaddress.IPv4Address(address)), port ^ (COOKIE >> 16)


def udp_socket(local_ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((local_ip, 0))
    sock.settimeout(2)
    return sock


def test_a_registered_phone_gets_its_public_address_back_and_a_stranger_gets_nothing(
    registrar: RunningRegistrar,
) -> None:
    phone_ip = "127.0.0.61"
    phone = UserAgent(registrar.host, registrar.sip_port, "alice", "alice-secret-1", local_ip=phone_ip)
    assert status_of(phone.register(f"sip:alice@{phone_ip}:5060", 300)) == 200
    server = (registrar.host, registrar.sip_port)
    with udp_socket(phone_ip) as sock:
        for fingerprint in (False, True):
            transaction_id = os.urandom(12)
            sock.sendto(binding_request(transaction_id, fingerprint=fingerprint), server)
            response = sock.recv(2048)
            assert mapped_address(response, transaction_id) == (phone_ip, sock.getsockname()[1])
            if fingerprint:
                assert response[-8:-4] == bytes.fromhex("80280004")
                assert struct.unpack("!I", response[-4:])[0] == zlib.crc32(response[:-8]) ^ 0x5354554E
        # Garbage behind a STUN header: dropped, counted, and the port still answers.
        sock.sendto(struct.pack("!HHI12s", 0x0001, 8, COOKIE, os.urandom(12)) + b"\x00\x20\x00\x40junk", server)
        transaction_id = os.urandom(12)
        sock.sendto(binding_request(transaction_id), server)
        assert mapped_address(sock.recv(2048), transaction_id)[0] == phone_ip
    # Never registered from here: answering would make us a reflector for forged sources.
    with udp_socket("127.0.0.62") as stranger:
        stranger.sendto(binding_request(os.urandom(12)), server)
        with pytest.raises(TimeoutError):
            stranger.recv(2048)
    assert registrar.metric("sipreg_stun_messages_total", result="answered") == 3
    assert registrar.metric("sipreg_stun_messages_total", result="malformed") == 1
    assert registrar.metric("sipreg_stun_messages_total", result="stranger") == 1
    # SIP goes on on the same port.
    assert status_of(phone.register(f"sip:alice@{phone_ip}:5060", 300)) == 200
