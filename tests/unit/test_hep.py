"""registrar.hep: HEP3 packets read back chunk by chunk here (struct only), and the sender on real UDP sockets."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from registrar.hep import HepSender, collector_address, encode
from registrar.sip.trace import Captured

# The example packet of the HEP3 Network Protocol Specification (rev. 37): SIP over UDP from
# 212.202.0.1:12010 to 82.116.0.211:5060 at 1313440459.12, capture id 228, payload shortened.
SPECIFICATION_EXAMPLE = bytes.fromhex("""
    48455033 0071
    0000 0001 0007 02
    0000 0002 0007 11
    0000 0003 000a d4ca0001
    0000 0004 000a 527400d3
    0000 0007 0008 2eea
    0000 0008 0008 13c4
    0000 0009 000a 4e4982cb
    0000 000a 000a 0001d4c0
    0000 000b 0007 01
    0000 000c 000a 000000e4
    0000 000f 0014 494e5649544520736970 3a626f62
""")

REGISTER = (b"REGISTER sip:sip.example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:40312;branch=z9hG4bK1\r\n"
            b"Call-ID: a84b4c76e66710\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")


def chunks(packet: bytes) -> list[tuple[int, int, bytes]]:
    """(vendor, type, value) of each chunk, checking the header and that the lengths add up."""
    assert packet[:4] == b"HEP3"
    (total,) = struct.unpack("!H", packet[4:6])
    assert total == len(packet)
    found, offset = [], 6
    while offset < total:
        vendor, kind, length = struct.unpack("!HHH", packet[offset:offset + 6])
        assert length >= 6
        found.append((vendor, kind, packet[offset + 6:offset + length]))
        offset += length
    assert offset == total
    return found


def captured(source: tuple[str, int], destination: tuple[str, int], transport: str = "udp", node: str = "node-1",
             data: bytes = REGISTER, time: float = 1700000000.123456) -> Captured:
    return Captured(time, node, transport, source, destination, True, data)


def test_the_specification_example_is_encoded_byte_for_byte() -> None:
    example = captured(("212.202.0.1", 12010), ("82.116.0.211", 5060), node="", data=b"INVITE sip:bob",
                       time=1313440459.12)
    assert encode(example, 228) == SPECIFICATION_EXAMPLE


def test_an_ipv4_udp_message_has_every_generic_chunk_then_key_node_and_payload() -> None:
    packet = encode(captured(("192.0.2.10", 40312), ("198.51.100.5", 5060)), 2001, "hep-secret")
    assert chunks(packet) == [
        (0, 0x01, bytes([2])),  # AF_INET
        (0, 0x02, bytes([17])),  # UDP
        (0, 0x03, bytes([192, 0, 2, 10])),
        (0, 0x04, bytes([198, 51, 100, 5])),
        (0, 0x07, struct.pack("!H", 40312)),
        (0, 0x08, struct.pack("!H", 5060)),
        (0, 0x09, struct.pack("!I", 1700000000)),
        (0, 0x0A, struct.pack("!I", 123456)),
        (0, 0x0B, bytes([1])),  # SIP
        (0, 0x0C, struct.pack("!I", 2001)),
        (0, 0x0E, b"hep-secret"),
        (0, 0x13, b"node-1"),
        (0, 0x0F, REGISTER),
    ]
    # Each chunk's length counts its 6-byte head: 13 chunks around the values above.
    assert len(packet) == 6 + 13 * 6 + 1 + 1 + 4 + 4 + 2 + 2 + 4 + 4 + 1 + 4 + 10 + 6 + len(REGISTER)


@pytest.mark.parametrize("transport", ["tcp", "tls", "ws", "wss"])
def test_an_ipv6_message_on_a_connection_is_tcp_with_16_byte_addresses(transport: str) -> None:
    packet = encode(captured(("2001:db8::10", 40312), ("2001:db8:0:1::5", 5061), transport, node="",
                             time=1700000000.9999996), 7)
    assert [chunk for chunk in chunks(packet) if chunk[1] in (0x01, 0x02, 0x05, 0x06, 0x09, 0x0A)] == [
        (0, 0x01, bytes([10])),  # AF_INET6, as Linux numbers it
        (0, 0x02, bytes([6])),  # TCP
        (0, 0x05, bytes.fromhex("20010db8000000000000000000000010")),
        (0, 0x06, bytes.fromhex("20010db8000000010000000000000005")),
        (0, 0x09, struct.pack("!I", 1700000001)),  # rounded to the microsecond, carried into the seconds
        (0, 0x0A, struct.pack("!I", 0)),
    ]
    assert [kind for _, kind, _ in chunks(packet)] == [0x01, 0x02, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C,
                                                       0x0F]


def test_a_message_larger_than_a_hep_packet_is_refused() -> None:
    with pytest.raises(ValueError, match="more than one HEP packet holds"):
        encode(captured(("192.0.2.10", 40312), ("198.51.100.5", 5060), data=b"x" * 65535), 1)


def test_our_end_in_another_family_than_the_peer_is_the_peers_unspecified_address() -> None:
    found = {kind: value for _, kind, value in chunks(encode(captured(("192.0.2.10", 40312), ("2001:db8::5", 5060)), 1))}
    assert found[0x01] == bytes([2]) and found[0x03] == bytes([192, 0, 2, 10]) and found[0x04] == bytes(4)


@pytest.fixture
def collector() -> Iterator[socket.socket]:
    """A UDP socket on 127.0.0.1 at a port the system chose."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listening:
        listening.bind(("127.0.0.1", 0))
        listening.settimeout(5)
        yield listening


def test_the_sender_delivers_the_encoded_packet_to_the_collector(collector: socket.socket) -> None:
    sender = HepSender(collector.getsockname(), 2001, "hep-secret")
    message = captured(("192.0.2.10", 40312), ("198.51.100.5", 5060))
    sender.send(message)
    assert collector.recv(65535) == encode(message, 2001, "hep-secret")
    assert (sender.sent, sender.dropped) == (1, 0)
    sender.close()


def test_a_collector_whose_port_is_closed_costs_copies_never_an_exception() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        address = gone.getsockname()
    sender = HepSender(address, 1)
    for _ in range(10):
        sender.send(captured(("192.0.2.10", 40312), ("198.51.100.5", 5060)))
    # Linux answers a send with the ICMP port unreachable that the one before it drew (ECONNREFUSED).
    assert sender.sent + sender.dropped == 10 and sender.dropped >= 1
    sender.close()


def test_a_full_socket_buffer_drops_the_copy_at_once() -> None:
    sender = HepSender(("127.0.0.1", 9), 1)
    # A datagram socket pair that nobody reads fills up, where loopback UDP would drop at the receiver.
    full, unread = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    full.setblocking(False)
    sender._socket.close()
    sender._socket = full
    for _ in range(5000):
        sender.send(captured(("192.0.2.10", 40312), ("198.51.100.5", 5060)))
    assert sender.dropped > 0 and sender.sent + sender.dropped == 5000
    sender.close()
    unread.close()


def test_many_copies_a_closed_sender_and_an_oversized_message_never_raise(collector: socket.socket) -> None:
    sender = HepSender(collector.getsockname(), 1)
    for _ in range(2000):  # never read: loopback drops at the receiver, the sender goes on
        sender.send(captured(("192.0.2.10", 40312), ("198.51.100.5", 5060), data=b"x" * 60000))
    assert sender.sent + sender.dropped == 2000
    sent, dropped = sender.sent, sender.dropped
    sender.send(captured(("192.0.2.10", 40312), ("198.51.100.5", 5060), data=b"x" * 70000))
    sender.close()
    sender.send(captured(("192.0.2.10", 40312), ("198.51.100.5", 5060)))
    assert (sender.sent, sender.dropped) == (sent, dropped + 2)


def test_a_collector_name_that_does_not_resolve_or_a_bad_capture_id_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="'collector.invalid' does not resolve"):
        HepSender(("collector.invalid", 9060), 1)  # RFC 6761: .invalid never resolves
    with pytest.raises(ValueError, match="32-bit"):
        HepSender(("127.0.0.1", 9060), 2**32)


def test_a_collector_is_host_and_port_an_ipv6_one_in_brackets() -> None:
    assert collector_address("homer.example.test:9060") == ("homer.example.test", 9060)
    assert collector_address("[2001:db8::1]:9060") == ("2001:db8::1", 9060)
    for wrong in ("homer.example.test", "homer:", "homer:0", "homer:65536", "2001:db8::1:9060", ":9060"):
        with pytest.raises(ValueError, match="not HOST:PORT"):
            collector_address(wrong)
