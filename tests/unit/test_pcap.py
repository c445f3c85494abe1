"""registrar.pcap: the file read back byte by byte here (struct only), every header and checksum recomputed."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from registrar.pcap import pcap_bytes, write_pcap
from registrar.sip.trace import Captured

PHONE, REGISTRAR = ("192.0.2.10", 40312), ("198.51.100.5", 5060)
PHONE6, REGISTRAR6 = ("2001:db8::10", 40312), ("2001:db8:0:1::5", 5061)


@dataclass
class Record:
    seconds: int
    microseconds: int
    included: int
    original: int
    packet: bytes


@dataclass
class Packet:
    version: int
    source: str
    destination: str
    protocol: int
    transport: bytes  # the UDP or TCP header and payload


def read_pcap(data: bytes) -> tuple[tuple[int, ...], list[Record]]:
    header = struct.unpack("<IHHiIII", data[:24])
    records, offset = [], 24
    while offset < len(data):
        seconds, microseconds, included, original = struct.unpack("<IIII", data[offset:offset + 16])
        records.append(Record(seconds, microseconds, included, original, data[offset + 16:offset + 16 + included]))
        offset += 16 + included
    assert offset == len(data)
    return header, records


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071, a word at a time (the module folds a struct-unpacked sum: this one carries as it goes)."""
    total = 0
    for index in range(0, len(data), 2):
        total += (data[index] << 8) | (data[index + 1] if index + 1 < len(data) else 0)
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes) -> int:
    return 0xFFFF - ones_complement_sum(data)


def parse_ip(packet: bytes) -> Packet:
    version = packet[0] >> 4
    if version == 4:
        ihl, tos, total, identification, fragment, ttl, protocol, stored, source, destination = struct.unpack(
            "!BBHHHBBH4s4s", packet[:20])
        assert ihl == 0x45 and tos == 0 and total == len(packet) and fragment == 0x4000 and ttl == 64
        assert identification == 0
        assert stored == checksum(packet[:10] + b"\0\0" + packet[12:20])
        assert ones_complement_sum(packet[:20]) == 0xFFFF  # and, checked the receiver's way, it adds up
        return Packet(4, str(ipaddress.IPv4Address(source)), str(ipaddress.IPv4Address(destination)), protocol,
                      packet[20:])
    assert version == 6
    first, length, next_header, hops, source, destination = struct.unpack("!IHBB16s16s", packet[:40])
    assert first == 6 << 28 and length == len(packet) - 40 and hops == 64
    return Packet(6, str(ipaddress.IPv6Address(source)), str(ipaddress.IPv6Address(destination)), next_header,
                  packet[40:])


def pseudo_header(packet: Packet) -> bytes:
    source = ipaddress.ip_address(packet.source).packed
    destination = ipaddress.ip_address(packet.destination).packed
    if packet.version == 4:
        return source + destination + bytes([0, packet.protocol]) + struct.pack("!H", len(packet.transport))
    return source + destination + struct.pack("!I", len(packet.transport)) + bytes([0, 0, 0, packet.protocol])


def parse_udp(packet: Packet) -> tuple[int, int, bytes]:
    assert packet.protocol == 17
    source_port, destination_port, length, stored = struct.unpack("!HHHH", packet.transport[:8])
    assert length == len(packet.transport)
    # A computed zero is sent as 0xFFFF: zero in UDP says "no checksum".
    expected = checksum(pseudo_header(packet) + packet.transport[:6] + b"\0\0" + packet.transport[8:])
    assert stored == (expected or 0xFFFF)
    return source_port, destination_port, packet.transport[8:]


def parse_tcp(packet: Packet) -> tuple[int, int, int, int, bytes]:
    assert packet.protocol == 6
    (source_port, destination_port, sequence, acknowledged, offset, flags, window, stored,
     urgent) = struct.unpack("!HHIIBBHHH", packet.transport[:20])
    assert offset == 5 << 4 and flags == 0x18 and window == 0xFFFF and urgent == 0  # PSH|ACK, no options
    assert stored == checksum(pseudo_header(packet) + packet.transport[:16] + b"\0\0" + packet.transport[18:])
    return source_port, destination_port, sequence, acknowledged, packet.transport[20:]


def message(time: float, source: tuple[str, int], destination: tuple[str, int], data: bytes,
            transport: str = "udp") -> Captured:
    return Captured(time, "node-1", transport, source, destination, destination in (REGISTRAR, REGISTRAR6), data)


def register(cseq: int, body: bytes = b"") -> bytes:
    return (f"REGISTER sip:sip.example.test SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.10:40312;branch=z9hG4bK{cseq}\r\n"
            f"Call-ID: a84b4c76e66710\r\nCSeq: {cseq} REGISTER\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def response(cseq: int, status: str) -> bytes:
    return (f"SIP/2.0 {status}\r\nVia: SIP/2.0/TCP 192.0.2.10:40312;branch=z9hG4bK{cseq}\r\n"
            f"Call-ID: a84b4c76e66710\r\nCSeq: {cseq} REGISTER\r\nContent-Length: 0\r\n\r\n").encode()


def test_the_file_header_says_pcap_2_4_in_microseconds_raw_ip_and_a_65535_snap_length() -> None:
    header, records = read_pcap(pcap_bytes([]))
    assert header == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)  # magic in the writer's order: microsecond stamps
    assert records == []


def test_a_udp_message_is_one_ipv4_datagram_with_its_time_ports_and_checksums() -> None:
    data = register(1)
    _, [record] = read_pcap(pcap_bytes([message(1700000000.123456, PHONE, REGISTRAR, data)]))
    assert (record.seconds, record.microseconds) == (1700000000, 123456)
    assert record.included == record.original == len(record.packet) == 20 + 8 + len(data)
    packet = parse_ip(record.packet)
    assert (packet.version, packet.source, packet.destination) == (4, PHONE[0], REGISTRAR[0])
    assert parse_udp(packet) == (PHONE[1], REGISTRAR[1], data)


def test_microseconds_are_rounded_and_carry_into_the_seconds() -> None:
    _, records = read_pcap(pcap_bytes([message(1700000000.9999996, PHONE, REGISTRAR, b"x"),
                                       message(1700000001.0000004, PHONE, REGISTRAR, b"y")]))
    assert [(record.seconds, record.microseconds) for record in records] == [(1700000001, 0), (1700000001, 0)]


def test_an_ipv6_message_is_an_ipv6_packet_checksummed_with_the_ipv6_pseudo_header(tmp_path: Path) -> None:
    with open(tmp_path / "trace.pcap", "wb") as stream:
        write_pcap([message(1.5, PHONE6, REGISTRAR6, register(1)),
                    message(2.5, REGISTRAR6, PHONE6, response(1, "200 OK"), "tls")], stream)
    _, [udp, tcp] = read_pcap((tmp_path / "trace.pcap").read_bytes())
    packet = parse_ip(udp.packet)
    assert (packet.version, packet.source, packet.destination) == (6, PHONE6[0], REGISTRAR6[0])
    assert parse_udp(packet) == (PHONE6[1], REGISTRAR6[1], register(1))
    packet = parse_ip(tcp.packet)
    assert (packet.version, packet.source, packet.destination) == (6, REGISTRAR6[0], PHONE6[0])
    source_port, destination_port, _, _, data = parse_tcp(packet)
    assert (source_port, destination_port, data) == (REGISTRAR6[1], PHONE6[1], response(1, "200 OK"))
    assert (tcp.seconds, tcp.microseconds, tcp.included, tcp.original) == (2, 500000, len(tcp.packet),
                                                                           len(tcp.packet))


@pytest.mark.parametrize("transport", ["tcp", "tls", "ws", "wss"])
def test_each_direction_of_a_connection_numbers_its_bytes_on_and_acknowledges_the_other(transport: str) -> None:
    exchange = [(PHONE, REGISTRAR, register(1)), (REGISTRAR, PHONE, response(1, "401 Unauthorized")),
                (PHONE, REGISTRAR, register(2)), (REGISTRAR, PHONE, response(2, "200 OK"))]
    other_connection = message(3.5, (PHONE[0], PHONE[1] + 1), REGISTRAR, register(9), transport)
    messages = [message(float(index), source, destination, data, transport)
                for index, (source, destination, data) in enumerate(exchange)]
    _, records = read_pcap(pcap_bytes([*messages[:3], other_connection, messages[3]]))
    segments = [parse_tcp(parse_ip(record.packet)) for record in records]
    assert [(source, destination, data) for source, destination, _, _, data in segments] == [
        (PHONE[1], REGISTRAR[1], register(1)), (REGISTRAR[1], PHONE[1], response(1, "401 Unauthorized")),
        (PHONE[1], REGISTRAR[1], register(2)), (PHONE[1] + 1, REGISTRAR[1], register(9)),
        (REGISTRAR[1], PHONE[1], response(2, "200 OK"))]
    (_, _, up1, ack1, _), (_, _, down1, ack2, _), (_, _, up2, ack3, _), (_, _, other, _, _), (_, _, down2, ack4, _) \
        = segments
    assert up2 == up1 + len(register(1)) and down2 == down1 + len(response(1, "401 Unauthorized"))
    assert ack1 == down1 and ack2 == up1 + len(register(1))  # what the other side has sent so far
    assert ack3 == down1 + len(response(1, "401 Unauthorized")) and ack4 == up2 + len(register(2))
    assert other == 0  # another connection, another numbering


def test_a_message_longer_than_an_ip_packet_goes_in_several_segments_numbered_on() -> None:
    data = register(1, b"x" * 150_000)
    _, records = read_pcap(pcap_bytes([message(7.25, PHONE, REGISTRAR, data, "tcp")]))
    assert len(records) == 3
    assert all(record.included == record.original == len(record.packet) <= 65535 for record in records)
    assert all((record.seconds, record.microseconds) == (7, 250000) for record in records)
    segments = [parse_tcp(parse_ip(record.packet)) for record in records]
    assert b"".join(segment[4] for segment in segments) == data
    assert [segment[2] for segment in segments] == [0, len(segments[0][4]), len(segments[0][4]) + len(segments[1][4])]
    assert len(records[0].packet) == 65535


def test_a_udp_message_longer_than_an_ip_packet_is_recorded_cut_with_its_whole_length() -> None:
    data = register(1, b"y" * 70_000)
    _, [record] = read_pcap(pcap_bytes([message(1.0, PHONE, REGISTRAR, data)]))
    assert record.included == len(record.packet) == 65535 and record.original == 20 + 8 + len(data)
    assert parse_udp(parse_ip(record.packet)) == (PHONE[1], REGISTRAR[1], data[:65535 - 28])


def test_our_end_in_another_family_than_the_peer_or_no_ip_is_the_peers_unspecified_address() -> None:
    # Our end where its socket could not be asked, or an advertised name: the packet still has one family.
    for ours in (REGISTRAR6, ("registrar.example.test", 5060)):
        _, [record] = read_pcap(pcap_bytes([Captured(1.0, "node-1", "udp", PHONE, ours, True, b"x")]))
        packet = parse_ip(record.packet)
        assert (packet.version, packet.source, packet.destination) == (4, PHONE[0], "0.0.0.0")
