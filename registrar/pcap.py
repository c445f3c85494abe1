"""Captured SIP messages as a classic libpcap file, which tshark, Wireshark and sngrep open.

Each message is one record holding a bare IP packet (link type LINKTYPE_RAW), IPv4 or IPv6 by its
addresses: a UDP message as an IP+UDP datagram, a message over tcp, tls, ws or wss as IP+TCP
segments (PSH|ACK) whose payload is the SIP message itself. TLS and WebSocket messages are kept as
the registrar read or wrote them, decrypted and unframed, so they appear as SIP over TCP on the
ports they used; dissectors find SIP over TCP by port, so for ports other than 5060 Wireshark needs
"Decode As" SIP (tshark: `-d tcp.port==5061,sip`).

No handshake is invented: each direction of a connection (its 4-tuple) numbers its bytes on from
one message to the next, and acknowledges what the other direction sent, so stream analysis sees a
connection captured after it opened, with nothing missing. A message too long for one IP packet
goes in several segments. A UDP message too long for one (none is in practice: it is over 65,000
bytes) is recorded cut to what fits, as a capture with a snap length would cut it: the packet
is a whole datagram of the message's first bytes, and its record's original length is the whole
message's.
"""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Iterable
from typing import BinaryIO

from registrar.sip.source import STREAM_TRANSPORTS
from registrar.sip.trace import Captured, IPAddress, ip_ends

LINKTYPE_RAW = 101
# No packet written is longer: the most an IPv4 length field can say (IPv6's is kept to it too).
SNAPLEN = 65535
_FILE_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW)

_IP_HEADER = {4: 20, 6: 40}
_UDP_HEADER = 8
_TCP_HEADER = 20
_PSH_ACK = 0x18
_DONT_FRAGMENT = 0x4000
_HOPS = 64



def pcap_bytes(messages: Iterable[Captured]) -> bytes:
    """The pcap file of `messages`, in the order given."""
    buffer = io.BytesIO()
    write_pcap(messages, buffer)
    return buffer.getvalue()


def write_pcap(messages: Iterable[Captured], stream: BinaryIO) -> None:
    """Writes the pcap file of `messages` to `stream`, one record (or several, for a long TCP message) each."""
    stream.write(_FILE_HEADER)
    sequences: dict[tuple[bytes, int, bytes, int], int] = {}
    for message in messages:
        seconds, microseconds = message.timestamp
        for packet, length in _packets(message, sequences):
            stream.write(struct.pack("<IIII", seconds, microseconds, len(packet), length) + packet)


def _packets(message: Captured, sequences: dict[tuple[bytes, int, bytes, int], int]) -> list[tuple[bytes, int]]:
    """The IP packets that carry `message`, each with its length on the wire.

    `sequences` holds each TCP direction's next sequence number; a direction not seen yet starts at 0
    (tools show numbers relative to a stream's first segment anyway).
    """
    source_port, destination_port = message.source[1], message.destination[1]
    source, destination = ip_ends(message)
    data = message.data
    if message.transport not in STREAM_TRANSPORTS:
        room = SNAPLEN - _IP_HEADER[source.version] - _UDP_HEADER
        header = struct.pack("!HHHH", source_port, destination_port, _UDP_HEADER + min(len(data), room), 0)
        packet = _ip_packet(source, destination, socket.IPPROTO_UDP, header, data[:room])
        return [(packet, _IP_HEADER[source.version] + _UDP_HEADER + len(data))]
    forward = (source.packed, source_port, destination.packed, destination_port)
    backward = (destination.packed, destination_port, source.packed, source_port)
    room = SNAPLEN - _IP_HEADER[source.version] - _TCP_HEADER
    packets = []
    for start in range(0, max(len(data), 1), room):  # an empty message still makes one segment
        segment = data[start:start + room]
        sequence, acknowledged = sequences.get(forward, 0), sequences.get(backward, 0)
        sequences[forward] = (sequence + len(segment)) % 2**32
        header = struct.pack("!HHIIBBHHH", source_port, destination_port, sequence, acknowledged,
                             _TCP_HEADER // 4 << 4, _PSH_ACK, 0xFFFF, 0, 0)
        packet = _ip_packet(source, destination, socket.IPPROTO_TCP, header, segment)
        packets.append((packet, len(packet)))
    return packets


def _ip_packet(source: IPAddress, destination: IPAddress, protocol: int, header: bytes, payload: bytes) -> bytes:
    """The IP packet of a UDP or TCP header (its checksum field zero) and payload, with every checksum filled in."""
    length = len(header) + len(payload)
    if source.version == 4:
        pseudo_header = struct.pack("!4s4sxBH", source.packed, destination.packed, protocol, length)
    else:
        pseudo_header = struct.pack("!16s16sI3xB", source.packed, destination.packed, length, protocol)
    checksum = _checksum(pseudo_header + header + payload)
    if protocol == socket.IPPROTO_UDP and checksum == 0:
        checksum = 0xFFFF  # zero in UDP means "no checksum"
    offset = 6 if protocol == socket.IPPROTO_UDP else 16
    segment = header[:offset] + struct.pack("!H", checksum) + header[offset + 2:] + payload
    if source.version == 6:
        return struct.pack("!IHBB16s16s", 6 << 28, length, protocol, _HOPS, source.packed, destination.packed) + segment
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, _DONT_FRAGMENT, _HOPS, protocol, 0,
                            source.packed, destination.packed)
    return ip_header[:10] + struct.pack("!H", _checksum(ip_header)) + ip_header[12:] + segment


def _checksum(data: bytes) -> int:
    """RFC 1071's checksum: the ones' complement of the ones' complement sum of the 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
