"""What the wire sees on bad input and retransmissions: precise errors, no dead listener, no second processing."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.helpers import RunningRegistrar, start_registrar, stop_registrar

pytestmark = pytest.mark.integration

PBX = "pbx-office"  # authenticates by source address 127.0.0.2 (manifests/connections.yaml)


def register_text(branch: str, *, cseq: int = 1, call_id: str = "robust-1", transport: str = "UDP",
                  port: int = 5060, expires: int = 300) -> bytes:
    return (
        f"REGISTER sip:sip.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.2:{port};branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:{PBX}@sip.example.test>;tag=abc\r\n"
        f"To: <sip:{PBX}@sip.example.test>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{PBX}@127.0.0.2:{port}>\r\n"
        f"Expires: {expires}\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def options_text(branch: str) -> bytes:
    return (
        f"OPTIONS sip:sip.example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch={branch}\r\n"
        f"From: <sip:probe@sip.example.test>;tag=1\r\nTo: <sip:sip.example.test>\r\nCall-ID: {branch}\r\n"
        f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def udp_socket(local_ip: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((local_ip, 0))
    sock.settimeout(3)
    return sock


def exchange_udp(sock: socket.socket, registrar: RunningRegistrar, data: bytes) -> bytes:
    sock.sendto(data, (registrar.host, registrar.sip_port))
    return sock.recv(65535)


def test_retransmitted_register_gets_the_same_response_without_reprocessing(registrar: RunningRegistrar) -> None:
    with udp_socket("127.0.0.2") as sock:
        request = register_text("z9hG4bK-retrans-1")
        first = exchange_udp(sock, registrar, request)
        time.sleep(1.1)  # long enough for a second processing to show a different expires/Date
        second = exchange_udp(sock, registrar, request)
    assert first.startswith(b"SIP/2.0 200 OK\r\n")
    assert second == first
    assert "sipreg_retransmissions_absorbed_total 1.0" in registrar.metrics()
    [binding] = registrar.bindings(f"{PBX}@sip.example.test")
    assert binding["cseq"] == 1


def test_rport_is_filled_with_the_source_port(registrar: RunningRegistrar) -> None:
    with udp_socket("127.0.0.2") as sock:
        response = exchange_udp(sock, registrar, register_text("z9hG4bK-rport"))
        port = sock.getsockname()[1]
    assert f";rport={port}".encode() in response
    assert b";received=127.0.0.2" in response


def test_stale_cseq_for_the_same_call_id_is_rejected(registrar: RunningRegistrar) -> None:
    with udp_socket("127.0.0.2") as sock:
        assert exchange_udp(sock, registrar, register_text("z9hG4bK-c1", cseq=5)).startswith(b"SIP/2.0 200")
        response = exchange_udp(sock, registrar, register_text("z9hG4bK-c2", cseq=4))
    assert response.startswith(b"SIP/2.0 400 Invalid CSeq")
    assert registrar.bindings(f"{PBX}@sip.example.test")[0]["cseq"] == 5


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"REGISTER sip:sip.example.test SIP/3.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKv\r\n"
         b"From: <sip:a@sip.example.test>;tag=1\r\nTo: <sip:a@sip.example.test>\r\nCall-ID: v\r\n"
         b"CSeq: 1 REGISTER\r\n\r\n", b"505"),
        (b"REGISTER http://sip.example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKs\r\n"
         b"From: <sip:a@sip.example.test>;tag=1\r\nTo: <sip:a@sip.example.test>\r\nCall-ID: s\r\n"
         b"CSeq: 1 REGISTER\r\n\r\n", b"416"),
        (b"REGISTER sip:sip.example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKm\r\n"
         b"From: <sip:a@sip.example.test>;tag=1\r\nTo: <sip:a@sip.example.test>\r\nCall-ID: m\r\n"
         b"CSeq: 1 INVITE\r\n\r\n", b"400 CSeq Method Does Not Match"),
        (b"REGISTER sip:sip.example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKc\r\n"
         b"From: <sip:a@sip.example.test>;tag=1\r\nTo: <sip:a@sip.example.test>\r\nCall-ID: c\r\n"
         b"CSeq: 1 REGISTER\r\nContent-Length: 500\r\n\r\n", b"400 Content-Length Larger Than Message"),
        (b"FROBNICATE sip:sip.example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKf\r\n"
         b"From: <sip:a@sip.example.test>;tag=1\r\nTo: <sip:a@sip.example.test>\r\nCall-ID: f\r\n"
         b"CSeq: 1 FROBNICATE\r\n\r\n", b"501 Not Implemented"),
    ],
    ids=["version", "scheme", "cseq-method", "content-length", "unknown-method"],
)
def test_malformed_requests_get_a_precise_error_and_the_listener_lives(
    registrar: RunningRegistrar, data: bytes, status: bytes
) -> None:
    with udp_socket() as sock:
        response = exchange_udp(sock, registrar, data)
        assert response.startswith(b"SIP/2.0 " + status), response
        # Garbage with nothing to answer is dropped; the listener still answers afterwards.
        sock.sendto(b"\x00\xff garbage \r\n\r\n", (registrar.host, registrar.sip_port))
        assert exchange_udp(sock, registrar, options_text("z9hG4bK-after")).startswith(b"SIP/2.0 200 OK")
    assert "Traceback" not in registrar.log()


def test_tcp_frames_keepalives_and_survives_a_broken_stream(registrar: RunningRegistrar) -> None:
    with socket.create_connection((registrar.host, registrar.sip_port), timeout=3) as sock:
        sock.sendall(b"\r\n\r\n")  # RFC 5626 ping
        assert sock.recv(16) == b"\r\n"
        assert registrar.metric("sipreg_crlf_keepalives_total", transport="tcp") == 1
        # One message split over two writes, then two messages in one write.
        first, second = options_text("z9hG4bK-t1"), options_text("z9hG4bK-t2")
        sock.sendall(first[:40])
        time.sleep(0.05)
        sock.sendall(first[40:] + second)
        received = b""
        while received.count(b"SIP/2.0 200 OK") < 2:
            chunk = sock.recv(65535)
            assert chunk, "connection closed early"
            received += chunk
    with socket.create_connection((registrar.host, registrar.sip_port), timeout=3) as sock:
        sock.sendall(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: nine\r\n\r\n")
        assert sock.recv(65535) == b""  # unframeable: closed, nothing to answer with
    with socket.create_connection((registrar.host, registrar.sip_port), timeout=3) as sock:
        sock.sendall(options_text("z9hG4bK-t3"))
        assert sock.recv(65535).startswith(b"SIP/2.0 200 OK")


def test_tls_listener_answers_over_tls(registrar: RunningRegistrar) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the registrar runs with its self-signed certificate
    with socket.create_connection((registrar.host, registrar.tls_port), timeout=3) as raw:
        with context.wrap_socket(raw, server_hostname="sip.example.test") as sock:
            sock.sendall(options_text("z9hG4bK-tls"))
            assert sock.recv(65535).startswith(b"SIP/2.0 200 OK")
            assert sock.getpeercert(binary_form=True)


def test_a_request_with_a_malformed_via_is_answered_400_not_processed(registrar: RunningRegistrar) -> None:
    data = register_text("z9hG4bK-badvia").replace(
        b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-badvia;rport", b"Via: SIP/2.0/UDP 127.0.0.2:notaport;branch=z9hG4bK-badvia"
    )
    with udp_socket("127.0.0.2") as sock:
        response = exchange_udp(sock, registrar, data)
    assert response.startswith(b"SIP/2.0 400 Bad Via"), response
    assert registrar.bindings() == []


def test_connections_dropped_mid_message_or_mid_handshake_leave_the_listeners_serving(registrar: RunningRegistrar) -> None:
    import struct

    with socket.create_connection((registrar.host, registrar.sip_port), timeout=3) as sock:
        sock.sendall(options_text("z9hG4bK-half")[:50])
        # RST instead of FIN: the peer vanishes with half a message buffered.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with socket.create_connection((registrar.host, registrar.tls_port), timeout=3) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a ClientHello, then gone
    with socket.create_connection((registrar.host, registrar.tls_port), timeout=3) as sock:
        sock.sendall(b"OPTIONS sip:x SIP/2.0\r\n\r\n")  # plaintext on the TLS port
    time.sleep(0.2)
    test_tls_listener_answers_over_tls(registrar)
    with socket.create_connection((registrar.host, registrar.sip_port), timeout=3) as sock:
        sock.sendall(options_text("z9hG4bK-after-drop"))
        assert sock.recv(65535).startswith(b"SIP/2.0 200 OK")
    deadline = time.monotonic() + 3  # the server learns of the last close asynchronously
    while 'sipreg_connections{transport="tcp"} 0.0' not in registrar.metrics():
        assert time.monotonic() < deadline, registrar.metrics()
        time.sleep(0.05)


# The probe's datagram: a quoted string in a Via parameter that never ends.
VIA_PROBE = (
    b"REGISTER sip:sip.example.test SIP/2.0\r\n"
    b'Via: SIP/2.0/UDP 1.2.3.4;x="abc\r\n'
    b"From: <sip:a@sip.example.test>;tag=1\r\nTo: <sip:a@sip.example.test>\r\nCall-ID: probe\r\nCSeq: 1 REGISTER\r\n\r\n"
)


def test_unparsable_messages_get_a_400_and_cost_one_log_line_not_a_traceback_each(tmp_path: Path) -> None:
    # At debug level, where what the registrar logs about bad input shows.
    running = start_registrar(tmp_path, "--log-level", "debug")
    try:
        with udp_socket() as sock:
            for _ in range(20):
                response = exchange_udp(sock, running, VIA_PROBE)
                assert response.startswith(b"SIP/2.0 400 Bad Via: unterminated quoted string\r\n"), response
            injected = VIA_PROBE.replace(b';x="abc', b";branch=z9hG4bK-cr").replace(
                b"SIP/2.0\r\nVia", b"SIP/2.0\rX-Injected:y\r\nVia"
            )
            response = exchange_udp(sock, running, injected)
            assert response.startswith(b"SIP/2.0 400 Bad Request-Line: control character 0x0D\r\n"), response
            assert b"X-Injected" not in response
        with socket.create_connection((running.host, running.sip_port), timeout=3) as sock:
            # One bad message does not cost the connection: the next one is answered on it.
            sock.sendall(VIA_PROBE + options_text("z9hG4bK-after-bad"))
            received = b""
            while b"SIP/2.0 200 OK" not in received:
                chunk = sock.recv(65535)
                assert chunk, f"connection closed after {received!r}"
                received += chunk
            assert received.startswith(b"SIP/2.0 400 Bad Via: unterminated quoted string\r\n")
        assert running.metric("sipreg_internal_errors_total") == 0
        assert running.metric("sipreg_parse_errors_total", transport="udp") == 21
    finally:
        stop_registrar(running)
    log = running.log()
    assert "Traceback" not in log
    # 22 in a second, 1 line: the rest are counted in the next line, 10 s on.
    assert log.count("unparsable message") == 1, log
