"""The trace formats read by the tools people open them with: tshark reads our pcap files, sngrep our HEP.

Debian bookworm's tshark (Wireshark 4.0) has no HEP dissector (sipcapture ships one as a Lua
plugin), so HEP is decoded by sngrep, which reads it natively: it turns each HEP packet back into
the SIP datagram it describes, in a pcap file that tshark then reads.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from registrar.hep import HepSender
from registrar.pcap import pcap_bytes
from registrar.sip.trace import Captured
from tests.helpers import free_port

TSHARK = shutil.which("tshark")
SNGREP = shutil.which("sngrep")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(TSHARK is None, reason="tshark not installed (Debian package tshark)"),
]

FIELDS = ("frame.time_epoch", "ip.src", "ip.dst", "{0}.srcport", "{0}.dstport", "sip.Method", "sip.Status-Code",
          "sip.Call-ID")
CHECKSUMS = ("-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE")
GOOD = "1"  # tshark's checksum status "Good"


def tshark(path: Path, fields: tuple[str, ...], *options: str) -> list[tuple[str, ...]]:
    command = [TSHARK or "tshark", "-n", "-r", str(path), *options, "-T", "fields", "-E", "separator=/t"]
    for field in fields:
        command += ["-e", field]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return [tuple(line.split("\t")) for line in done.stdout.splitlines()]


def exchange(transport: str, phone: tuple[str, int], registrar: tuple[str, int], start: float) -> list[Captured]:
    """REGISTER, 401, REGISTER with credentials, 200, as the registrar at `registrar` saw them."""
    call_id = f"{transport}-3848276298220188511@127.0.0.1"
    common = (f"From: <sip:alice@sip.example.test>;tag=9fxced76sl\r\nTo: <sip:alice@sip.example.test>{{to_tag}}\r\n"
              f"Call-ID: {call_id}\r\nCSeq: {{cseq}} REGISTER\r\n")
    via = f"Via: SIP/2.0/{transport.upper()} {phone[0]}:{phone[1]};rport;branch=z9hG4bK{{cseq}}776asdhds\r\n"
    contact = f"Contact: <sip:alice@{phone[0]}:{phone[1]};transport={transport}>\r\n"
    register = "REGISTER sip:sip.example.test SIP/2.0\r\n" + via + "Max-Forwards: 70\r\n" + common + contact
    texts = [
        (register + "Expires: 300\r\nContent-Length: 0\r\n\r\n").format(cseq=1, to_tag=""),
        ("SIP/2.0 401 Unauthorized\r\n" + via + common + 'WWW-Authenticate: Digest realm="sip.example.test", '
         'nonce="ea9c8e88df84f1cec4341ae6cbe5a359", algorithm=MD5, qop="auth"\r\nContent-Length: 0\r\n\r\n'
         ).format(cseq=1, to_tag=";tag=reg401"),
        (register + 'Authorization: Digest username="alice", realm="sip.example.test", '
         'nonce="ea9c8e88df84f1cec4341ae6cbe5a359", uri="sip:sip.example.test", '
         'response="dfe56131d1958046689d83306477ecc", algorithm=MD5, qop=auth, nc=00000001, cnonce="0a4f113b"\r\n'
         "Expires: 300\r\nContent-Length: 0\r\n\r\n").format(cseq=2, to_tag=""),
        ("SIP/2.0 200 OK\r\n" + via + common + contact.rstrip("\r\n") + ";expires=300\r\nContent-Length: 0\r\n\r\n"
         ).format(cseq=2, to_tag=";tag=reg200"),
    ]
    messages = []
    for index, text in enumerate(texts):
        inbound = index % 2 == 0
        source, destination = (phone, registrar) if inbound else (registrar, phone)
        messages.append(Captured(start + index * 0.250731, "node-1", transport, source, destination, inbound,
                                 text.encode()))
    return messages


def expected_rows(messages: list[Captured]) -> list[tuple[str, ...]]:
    rows = []
    for message in messages:
        first_line = message.data.split(b"\r\n", 1)[0].decode()
        request = not first_line.startswith("SIP/2.0")
        call_id = next(line.split(": ", 1)[1] for line in message.data.decode().split("\r\n")
                       if line.startswith("Call-ID:"))
        rows.append((f"{message.time:.6f}", message.source[0], message.destination[0], str(message.source[1]),
                     str(message.destination[1]), first_line.split()[0] if request else "",
                     "" if request else first_line.split()[1], call_id))
    return rows


def to_the_microsecond(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [(f"{float(row[0]):.6f}", *row[1:]) for row in rows]


def test_tshark_reads_a_register_exchange_over_udp_with_good_checksums(tmp_path: Path) -> None:
    phone, registrar = ("127.0.0.1", free_port()), ("127.0.0.2", free_port())
    messages = exchange("udp", phone, registrar, 1700000000.123456)
    (tmp_path / "udp.pcap").write_bytes(pcap_bytes(messages))
    decode = ("-d", f"udp.port=={registrar[1]},sip")
    rows = tshark(tmp_path / "udp.pcap", tuple(field.format("udp") for field in FIELDS), *decode)
    assert to_the_microsecond(rows) == expected_rows(messages)
    checks = tshark(tmp_path / "udp.pcap", ("ip.checksum.status", "udp.checksum.status"), *CHECKSUMS, *decode)
    assert checks == [(GOOD, GOOD)] * 4


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_tshark_reads_a_register_exchange_over_a_connection_as_one_clean_tcp_stream(
        tmp_path: Path, transport: str) -> None:
    phone, registrar = ("127.0.0.1", free_port()), ("127.0.0.2", free_port())
    messages = exchange(transport, phone, registrar, 1700000100.000001)
    (tmp_path / "tcp.pcap").write_bytes(pcap_bytes(messages))
    decode = ("-d", f"tcp.port=={registrar[1]},sip")
    rows = tshark(tmp_path / "tcp.pcap", tuple(field.format("tcp") for field in FIELDS), *decode)
    assert to_the_microsecond(rows) == expected_rows(messages)
    checks = tshark(tmp_path / "tcp.pcap", ("ip.checksum.status", "tcp.checksum.status", "tcp.stream",
                                            "tcp.analysis.flags"), *CHECKSUMS, *decode)
    assert checks == [(GOOD, GOOD, "0", "")] * 4  # one stream; no retransmission, gap or unseen ACK


def test_tshark_reassembles_a_message_split_over_several_segments(tmp_path: Path) -> None:
    phone, registrar = ("127.0.0.1", free_port()), ("127.0.0.2", free_port())
    body = b"x" * 150_000
    message = (f"MESSAGE sip:bob@sip.example.test SIP/2.0\r\nVia: SIP/2.0/TCP {phone[0]}:{phone[1]};branch=z9hG4bKm\r\n"
               "From: <sip:alice@sip.example.test>;tag=1\r\nTo: <sip:bob@sip.example.test>\r\nCall-ID: big-1\r\n"
               f"CSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    (tmp_path / "big.pcap").write_bytes(pcap_bytes([Captured(5.5, "node-1", "tcp", phone, registrar, True, message)]))
    rows = tshark(tmp_path / "big.pcap", ("frame.len", "sip.Method", "sip.Content-Length", "tcp.analysis.flags"),
                  "-d", f"tcp.port=={registrar[1]},sip")
    last = 20 + 20 + len(message) - 2 * (65535 - 40)  # what is left after two full segments, with its headers
    assert rows == [("65535", "", "", ""), ("65535", "", "", ""), (str(last), "MESSAGE", str(len(body)), "")]


@pytest.mark.skipif(SNGREP is None, reason="sngrep not installed (Debian package sngrep)")
def test_hep_sent_to_a_collector_is_read_back_by_sngrep_and_tshark(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(5)
        sender = HepSender(collector.getsockname(), 2001, "hep-secret")
        messages = exchange("udp", ("127.0.0.1", free_port()), ("127.0.0.2", free_port()), 1700000200.654321)
        received = []
        for message in messages:
            sender.send(message)
            packet, source = collector.recvfrom(65535)
            # The collector's own capture of what reached it, by a clock of its own: sngrep must take
            # the time, like the addresses and ports, from inside the HEP packet.
            received.append(Captured(message.time + 3.5, "collector", "udp", source, collector.getsockname(), True,
                                     packet))
        sender.close()
    assert (sender.sent, sender.dropped) == (4, 0)
    (tmp_path / "hep.pcap").write_bytes(pcap_bytes(received))

    # tshark sees the HEP datagrams themselves, whole and with good checksums.
    port = str(received[0].destination[1])
    rows = tshark(tmp_path / "hep.pcap", ("udp.dstport", "udp.checksum.status", "data.data"), *CHECKSUMS,
                  "-d", f"udp.port=={port},data")
    assert rows == [(port, GOOD, packet.data.hex()) for packet in received]

    # sngrep decodes them (-E) into the SIP datagrams they carry: addresses, ports and times from HEP.
    subprocess.run([SNGREP or "sngrep", "-F", "-N", "-q", "-E", "-I", str(tmp_path / "hep.pcap"),
                    "-O", str(tmp_path / "sip.pcap")], capture_output=True, timeout=60, check=True)
    decoded = bytearray((tmp_path / "sip.pcap").read_bytes())
    # sngrep 1.6 builds each decoded frame with an Ethernet header (its made-up MACs bb:.. and aa:..) but
    # writes the input's link type: the frames are Ethernet, so the file is said to be.
    if struct.unpack("<I", decoded[20:24])[0] == 101 and decoded[40:46] == b"\xbb" * 6:
        decoded[20:24] = struct.pack("<I", 1)
    (tmp_path / "sip.pcap").write_bytes(decoded)
    rows = tshark(tmp_path / "sip.pcap", tuple(field.format("udp") for field in FIELDS),
                  "-d", f"udp.port=={messages[0].destination[1]},sip")
    # sngrep writes each decoded packet twice (once as it decodes it, once as it keeps it).
    assert list(dict.fromkeys(to_the_microsecond(rows))) == expected_rows(messages)
