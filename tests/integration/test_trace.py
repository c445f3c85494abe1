"""`sipreg trace` against real replicas on a real etcd: a phone's exchanges with two of them, as text and as a
pcap that tshark reads back; the trace's bound under a flood of made-up usernames; HEP copies of a REGISTER."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from registrar.store import layout
from tests.helpers import API_TOKEN, ROOT, manifests_with_security, serving
from tests.integration.sip_client import UserAgent, status_of

DOMAIN = "sip.example.test"
PASSWORD = "alice-secret-1"  # manifests/connections.yaml's alice


def sipreg_trace(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    token_file = tmp_path / "trace-token"
    token_file.write_text(API_TOKEN + "\n")
    return subprocess.run(
        [sys.executable, "-P", "-m", "registrar.cli", "trace", *arguments, "--api-token-file", str(token_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def trace_lines(output: str) -> list[tuple[str, str, str, str]]:
    """(node, source, destination, first line) of each message `sipreg trace` printed."""
    lines = []
    for line in output.splitlines():
        date, clock, node, source, arrow, destination, transport, first = line.split(" ", 7)
        assert arrow == "->" and transport == "UDP", line
        lines.append((node, source, destination, first))
    return lines


def test_a_trace_shows_a_phones_exchanges_with_two_replicas_in_order_as_text_and_as_a_pcap(tmp_path, replicas, etcd):
    if shutil.which("tshark") is None:
        pytest.skip("tshark (Debian package tshark) is not installed: `make test` installs it")
    first, second = replicas(node="trace-a"), replicas(node="trace-b")
    wrong = UserAgent(first.host, first.sip_port, "alice", "not-the-password", local_ip="127.0.0.2")
    right = UserAgent(second.host, second.sip_port, "alice", PASSWORD, local_ip="127.0.0.3")
    assert status_of(wrong.register("sip:alice@127.0.0.2:5070")) == 401
    assert status_of(right.register("sip:alice@127.0.0.3:5070")) == 200

    pcap = tmp_path / "alice.pcap"
    through_api = sipreg_trace(
        tmp_path, f"alice@{DOMAIN}", "--api", f"http://127.0.0.1:{first.http_port}", "--pcap", str(pcap), "--full"
    )
    assert through_api.returncode == 0, through_api.stderr
    summaries = [line for line in through_api.stdout.splitlines() if line.startswith("20")]
    registrar_a, registrar_b = f"127.0.0.1:{first.sip_port}", f"127.0.0.1:{second.sip_port}"
    expected = []
    for node, registrar, phone, final in (("trace-a", registrar_a, "127.0.0.2", "SIP/2.0 401 Unauthorized"),
                                          ("trace-b", registrar_b, "127.0.0.3", "SIP/2.0 200 OK")):
        expected += [(node, "REGISTER sip:sip.example.test SIP/2.0", phone, registrar),
                     (node, "SIP/2.0 401 Unauthorized", registrar, phone),
                     (node, "REGISTER sip:sip.example.test SIP/2.0", phone, registrar),
                     (node, final, registrar, phone)]
    # From both replicas, in time order: the wrong password's two 401s, then the right one's 401 and 200.
    found = trace_lines("\n".join(summaries))
    assert [(node, first_line) for node, _, _, first_line in found] == [(n, line) for n, line, _, _ in expected]
    for (_, source, destination, _), (_, _, sender, receiver) in zip(found, expected):
        assert source.startswith(sender) and destination.startswith(receiver)
    # Whole messages with --full: the digest responses are there, the passwords never (they are never sent).
    assert through_api.stdout.count("Authorization: Digest") == 2
    assert "not-the-password" not in through_api.stdout and PASSWORD not in through_api.stdout

    # The connection's failure record (its SipConnection's lastFailure) names the replica and the request.
    failure = layout.decode_failure(DOMAIN, "alice", etcd.value(layout.failure_key(DOMAIN, "alice"), wait=5))
    assert failure.node == "trace-a" and failure.reason == "wrong password"
    assert failure.request == f"REGISTER sip:{DOMAIN} (CSeq 2 REGISTER, Call-ID {wrong.call_id})"

    # The same from the node registry in etcd, asking each replica itself.
    from_etcd = sipreg_trace(tmp_path, f"alice@{DOMAIN}", "--store", etcd.url)
    assert from_etcd.returncode == 0, from_etcd.stderr
    assert trace_lines(from_etcd.stdout) == found
    last = sipreg_trace(tmp_path, f"alice@{DOMAIN}", "--store", etcd.url, "--last", "2")
    assert trace_lines(last.stdout) == found[-2:]

    # tshark reads the pcap back: the same messages, between the same addresses and ports, at the same times.
    fields = ["frame.time_epoch", "ip.src", "udp.srcport", "ip.dst", "udp.dstport", "sip.Method", "sip.Status-Code",
              "sip.Call-ID"]
    tshark = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", f"udp.port=={first.sip_port},sip", "-d", f"udp.port=={second.sip_port},sip",
         "-T", "fields", *(argument for name in fields for argument in ("-e", name))],
        capture_output=True, text=True, timeout=60,
    )
    assert tshark.returncode == 0, tshark.stderr
    rows = [line.split("\t") for line in tshark.stdout.splitlines()]
    assert len(rows) == 8
    for row, (_, first_line, _, _), (_, source, destination, _) in zip(rows, expected, found):
        epoch, source_ip, source_port, destination_ip, destination_port, method, status, call_id = row
        assert f"{source_ip}:{source_port}" == source and f"{destination_ip}:{destination_port}" == destination
        assert (method or f"SIP/2.0 {status}") in first_line
    assert {row[7] for row in rows[:4]} == {wrong.call_id} and {row[7] for row in rows[4:]} == {right.call_id}
    times = [float(row[0]) for row in rows]
    assert times == sorted(times) and time.time() - 60 < times[0] <= times[-1] <= time.time()


def test_a_flood_of_made_up_usernames_leaves_the_trace_within_its_bound(tmp_path):
    # The flood's addresses are trusted, so that no rate limit drops it before the trace sees it.
    manifests = manifests_with_security(tmp_path / "manifests", {"trustedNetworks": ["127.0.0.0/8"]})
    senders = [f"127.0.0.{index}" for index in range(20, 24)]
    with serving(tmp_path, manifests=manifests) as registrar:
        answered = 0
        for sender in senders:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((sender, 0))
                sock.settimeout(0.5)
                port = sock.getsockname()[1]
                for _ in range(50):  # in steps of 50, so that no socket buffer overflows
                    for _ in range(50):
                        user = f"u{uuid.uuid4().hex[:12]}"
                        sock.sendto(register_for(user, sender, port), (registrar.host, registrar.sip_port))
                    answered += answers(sock, 50)
        assert answered >= 9_000  # the registrar answered (401) nearly every one of the 10,000
        # Made-up users belong to no connection: the flood fills one small ring per address, no more.
        assert registrar.metric("sipreg_trace_rings") <= len(senders)
        assert registrar.metric("sipreg_trace_bytes") <= len(senders) * 16 * 1024
        kept = sipreg_trace(tmp_path, senders[0], "--api", f"http://127.0.0.1:{registrar.http_port}")
        assert kept.returncode == 0, kept.stderr
        assert 0 < len(kept.stdout.splitlines()) <= 16
        # A real connection still gets its trace.
        phone = UserAgent(registrar.host, registrar.sip_port, "alice", PASSWORD, local_ip="127.0.0.30")
        assert status_of(phone.register("sip:alice@127.0.0.30:5070")) == 200
        alice = sipreg_trace(tmp_path, f"alice@{DOMAIN}", "--api", f"http://127.0.0.1:{registrar.http_port}")
        assert len(alice.stdout.splitlines()) == 4, alice.stdout


def test_a_followed_trace_prints_a_registration_over_tcp_as_it_happens_with_our_end_of_the_connection(tmp_path):
    with serving(tmp_path) as registrar:
        token_file = tmp_path / "follow-token"
        token_file.write_text(API_TOKEN)
        follow = subprocess.Popen(
            [sys.executable, "-P", "-m", "registrar.cli", "trace", f"alice@{DOMAIN}", "--follow",
             "--api", f"http://127.0.0.1:{registrar.http_port}", "--api-token-file", str(token_file)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            time.sleep(1.5)  # it has asked once, found nothing, and follows
            phone = UserAgent(registrar.host, registrar.sip_port, "alice", PASSWORD, local_ip="127.0.0.5",
                              transport="tcp")
            assert status_of(phone.register("sip:alice@127.0.0.5:5070;transport=tcp")) == 200
            printed = [follow.stdout.readline().rstrip("\n") for _ in range(4)]
        finally:
            follow.terminate()
            follow.wait(timeout=10)
    lines = [line.split(" ") for line in printed]
    registrar_end = f"127.0.0.1:{registrar.sip_port}"
    assert [line[6] for line in lines] == ["TCP"] * 4
    assert [" ".join(line[7:]) for line in lines] == [
        "REGISTER sip:sip.example.test SIP/2.0", "SIP/2.0 401 Unauthorized",
        "REGISTER sip:sip.example.test SIP/2.0", "SIP/2.0 200 OK",
    ]
    # Our end is the connection's: the registrar's SIP port; the phone's is the port it connected from.
    assert [line[5] if index % 2 == 0 else line[3] for index, line in enumerate(lines)] == [registrar_end] * 4
    assert {line[3] if index % 2 == 0 else line[5] for index, line in enumerate(lines)} == {
        lines[0][3]} and lines[0][3].startswith("127.0.0.5:")


def register_for(user: str, host: str, port: int) -> bytes:
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
        f"From: <sip:{user}@{DOMAIN}>;tag={uuid.uuid4().hex[:8]}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}@{host}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{host}:{port}>\r\n"
        f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def answers(sock: socket.socket, expected: int) -> int:
    """Read up to `expected` answers from `sock`, until none comes for a moment: how many came."""
    count = 0
    while count < expected:
        try:
            sock.recv(65535)
        except TimeoutError:
            break
        count += 1
    return count


def test_every_message_of_a_register_goes_to_the_hep_collector_with_its_addresses_time_and_capture_id(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(3)
        hep = f"127.0.0.1:{collector.getsockname()[1]}"
        with serving(tmp_path, "--hep", hep, "--hep-id", "4242") as registrar:
            before = time.time()
            phone = UserAgent(registrar.host, registrar.sip_port, "alice", PASSWORD, local_ip="127.0.0.4")
            assert status_of(phone.register("sip:alice@127.0.0.4:5070")) == 200
            after = time.time()
            packets = [parse_hep(collector.recv(65535)) for _ in range(4)]
    registrar_address = ("127.0.0.1", registrar.sip_port)
    firsts = [packet["payload"].split(b"\r\n", 1)[0] for packet in packets]
    assert firsts == [b"REGISTER sip:sip.example.test SIP/2.0", b"SIP/2.0 401 Unauthorized",
                      b"REGISTER sip:sip.example.test SIP/2.0", b"SIP/2.0 200 OK"]
    phone_port = packets[0]["source"][1]
    for index, packet in enumerate(packets):
        ends = [("127.0.0.4", phone_port), registrar_address]
        assert [packet["source"], packet["destination"]] == (ends if index % 2 == 0 else ends[::-1])
        assert packet["capture_id"] == 4242 and packet["family"] == 2 and packet["protocol"] == 17
        assert packet["protocol_type"] == 1  # SIP
        assert before - 1 <= packet["time"] <= after + 1
        assert phone.call_id.encode() in packet["payload"]
    assert [packet["time"] for packet in packets] == sorted(packet["time"] for packet in packets)


def parse_hep(datagram: bytes) -> dict:
    """A HEP3 packet's generic chunks, read by the layout alone ("HEP3", length, then vendor/type/length/value)."""
    assert datagram[:4] == b"HEP3" and struct.unpack("!H", datagram[4:6])[0] == len(datagram)
    chunks, offset = {}, 6
    while offset < len(datagram):
        vendor, kind, length = struct.unpack("!HHH", datagram[offset:offset + 6])
        assert vendor == 0 and length >= 6
        chunks[kind] = datagram[offset + 6:offset + length]
        offset += length
    assert offset == len(datagram)
    return {
        "family": chunks[1][0], "protocol": chunks[2][0],
        "source": (socket.inet_ntoa(chunks[3]), struct.unpack("!H", chunks[7])[0]),
        "destination": (socket.inet_ntoa(chunks[4]), struct.unpack("!H", chunks[8])[0]),
        "time": struct.unpack("!I", chunks[9])[0] + struct.unpack("!I", chunks[10])[0] / 1e6,
        "protocol_type": chunks[11][0], "capture_id": struct.unpack("!I", chunks[12])[0], "payload": chunks[15],
    }
