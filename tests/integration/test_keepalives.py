"""NAT keep-alives: STUN Binding answered on the SIP UDP port for registered phones only (RFC 5626 4.4.2), and OPTIONS
pings to UDP phones behind NAT from the one replica holding each."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from registrar.sip.message import make_response, parse_message
from registrar.store import layout
from sip_operator.status import connection_status
from tests.etcd_server import EtcdServer
from tests.helpers import RunningRegistrar, free_port, manifests_with_domain_spec
from tests.integration.sip_client import UserAgent, status_of

pytestmark = pytest.mark.integration

DOMAIN = "sip.example.test"

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


def test_a_phone_behind_nat_is_pinged_only_by_the_replica_it_registered_with_and_removed_when_it_stops_answering(
    replicas: Callable[..., RunningRegistrar], etcd: EtcdServer, tmp_path: Path,
) -> None:
    manifests = manifests_with_domain_spec(tmp_path / "manifests", keepalive={"pingIntervalSeconds": 1,
                                                                              "pingFailures": 2})
    a, b = replicas(manifests, node="a"), replicas(manifests, node="b")
    # Behind a NAT: its Contact names a private address, its packets come from 127.0.0.63:port.
    phone_ip, phone_port = "127.0.0.63", free_port("127.0.0.63")
    phone = UserAgent(a.host, a.sip_port, "bob", "bob-secret-2", local_ip=phone_ip, local_port=phone_port)
    assert status_of(phone.register("sip:bob@192.168.1.20:5060", 300)) == 200
    deadline = time.monotonic() + 5
    while not b.bindings(f"bob@{DOMAIN}") and time.monotonic() < deadline:
        time.sleep(0.05)  # both replicas know the binding, through etcd's watch
    assert b.bindings(f"bob@{DOMAIN}")
    pings_from: dict[int, int] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nat:
        nat.bind((phone_ip, phone_port))
        nat.settimeout(0.2)
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:  # the phone answers every ping for a while
            try:
                data, (_, port) = nat.recvfrom(65535)
            except TimeoutError:
                continue
            ping = parse_message(data)
            assert ping.method == "OPTIONS" and ping.uri == "sip:bob@192.168.1.20:5060"
            pings_from[port] = pings_from.get(port, 0) + 1
            nat.sendto(make_response(ping, 200, "OK").to_bytes(), (a.host, port))
    # From a, about one a second; from b, whose etcd holds the same binding, none.
    assert set(pings_from) == {a.sip_port} and pings_from[a.sip_port] >= 3, pings_from
    assert a.metric("sipreg_keepalive_pings_total", result="answered") >= 3
    # The phone is gone (the NAT forgot it): two pings unanswered, and it is removed everywhere.
    deadline = time.monotonic() + 10
    while b.bindings(f"bob@{DOMAIN}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert a.bindings(f"bob@{DOMAIN}") == [] and b.bindings(f"bob@{DOMAIN}") == []
    assert a.metric("sipreg_keepalive_failures_total", transport="udp") == 1
    assert b.metric("sipreg_keepalive_pings_total", result="sent") == 0
    # What the operator writes into the SipConnection's status (operator.status.connection_status).
    # Registrars write failure records a batch a second.
    failure = layout.decode_failure(DOMAIN, "bob", etcd.value(layout.failure_key(DOMAIN, "bob"), wait=5))
    assert failure.kind == "unreachable" and failure.source == f"udp:{phone_ip}:{phone_port}"
    status = connection_status(bindings=[], failure=failure, generation=1, problem=None, registration_enabled=True,
                               previous=None, now=time.time())
    [registered] = [condition for condition in status["conditions"] if condition["type"] == "Registered"]
    assert registered["reason"] == "ContactUnreachable" and "keepalive pings" in registered["message"]
