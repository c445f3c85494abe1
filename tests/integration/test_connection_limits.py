"""Connection limits on the wire: the per-source cap, the message and TLS handshake deadlines, a connect flood.

A real `sipreg serve` with small limits from its SipDomain's spec.security.connections.
127.0.0.2 plays the attacker (no `ip` connection trusts it here); 127.0.0.3 a UA
that must be served all along.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RunningRegistrar, one_domain_manifests, serving
from tests.integration.sip_client import UserAgent, status_of

pytestmark = pytest.mark.integration

ATTACKER, UA = "127.0.0.2", "127.0.0.3"
PER_SOURCE = 20
MESSAGE_SECONDS = 2
HANDSHAKE_SECONDS = 2
# The server sweeps messages in progress every 0.5 s; the rest is scheduling slack on a busy machine.
LATE = 1.5

SECURITY = (f"{{connections: {{perSource: {PER_SOURCE}, total: 200, messageSeconds: {MESSAGE_SECONDS}, "
            f"handshakeSeconds: {HANDSHAKE_SECONDS}}}}}")

OPTIONS = (
    b"OPTIONS sip:sip.example.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.3:5061;branch=z9hG4bK-early\r\n"
    b"From: <sip:probe@sip.example.test>;tag=1\r\nTo: <sip:sip.example.test>\r\nCall-ID: early\r\n"
    b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


@pytest.fixture
def registrar(tmp_path: Path) -> Iterator[RunningRegistrar]:
    manifests = one_domain_manifests(tmp_path / "manifests.yaml", SECURITY, "alice", "alice-secret-1")
    with serving(tmp_path, manifests=manifests) as running:
        yield running


def connect(registrar: RunningRegistrar, source: str, port: int | None = None) -> socket.socket:
    sock = socket.create_connection((registrar.host, port or registrar.sip_port), 3, source_address=(source, 0))
    sock.setblocking(False)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this connection without a byte sent on it (EOF or reset)."""
    try:
        return sock.recv(65535) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def wait_closed(sockets: list[socket.socket], timeout: float) -> None:
    """Wait until the server has closed every socket (fails after `timeout` seconds)."""
    started = time.monotonic()
    pending = list(sockets)
    while pending:
        left = started + timeout - time.monotonic()
        assert left > 0, f"{len(pending)} of {len(sockets)} connections still open after {timeout} s"
        readable, _, _ = select.select(pending, [], [], left)
        pending = [sock for sock in pending if not (sock in readable and closed_by_server(sock))]


def alice(registrar: RunningRegistrar) -> UserAgent:
    return UserAgent(registrar.host, registrar.sip_port, "alice", "alice-secret-1", transport="tcp", local_ip=UA)


def test_the_per_source_cap_holds_and_a_dripped_message_is_cut_off(registrar: RunningRegistrar) -> None:
    attacker = [connect(registrar, ATTACKER) for _ in range(PER_SOURCE + 10)]
    try:
        # The kernel completes every handshake; the server closes what is over the cap at accept.
        closed: list[socket.socket] = []
        deadline = time.monotonic() + 3
        while len(closed) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
            closed += [sock for sock in attacker if sock not in closed and closed_by_server(sock)]
        assert len(closed) == 10
        assert registrar.metric("sipreg_connections_refused_total", reason="per_source") == 10
        # The TLS listener shares the count: refused before any handshake (no ServerHello comes back).
        tls = connect(registrar, ATTACKER, registrar.tls_port)
        attacker.append(tls)
        tls.send(client_hello())
        assert select.select([tls], [], [], 2)[0], "the TLS connection over the cap is still open"
        assert closed_by_server(tls)

        open_ = [sock for sock in attacker[:-1] if sock not in closed]
        dripping, idle = open_[:10], open_[10:]
        for sock in dripping:
            sock.send(b"R")
        started = time.monotonic()
        # A byte every half second: traffic enough for any idle timeout, never a whole message.
        dripped = threading.Thread(target=drip, args=(dripping, MESSAGE_SECONDS + LATE), daemon=True)
        dripped.start()
        time.sleep(MESSAGE_SECONDS - 0.5)
        assert not any(closed_by_server(sock) for sock in dripping), "closed before the deadline"
        # Meanwhile a UA from elsewhere registers over TCP: 401, then 200.
        assert status_of(alice(registrar).register("sip:alice@127.0.0.3:5060", 300)) == 200
        wait_closed(dripping, started + MESSAGE_SECONDS + LATE - time.monotonic())
        assert not any(closed_by_server(sock) for sock in idle)  # idle connections wait for the 60 s timeout
        dripped.join()
    finally:
        for sock in attacker:
            sock.close()


def drip(sockets: list[socket.socket], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        for sock in sockets:
            try:
                sock.send(b"E")
            except OSError:
                pass  # closed by the server: what we are waiting for


def test_a_tls_handshake_that_never_completes_is_closed_after_the_deadline(registrar: RunningRegistrar) -> None:
    silent = connect(registrar, ATTACKER, registrar.tls_port)
    half = connect(registrar, ATTACKER, registrar.tls_port)
    try:
        half.send(client_hello()[:20])  # a ClientHello that never ends
        time.sleep(HANDSHAKE_SECONDS - 0.5)
        assert not closed_by_server(silent) and not closed_by_server(half), "closed before the deadline"
        wait_closed([silent, half], 0.5 + LATE)
    finally:
        silent.close()
        half.close()


def test_tls_data_sent_with_the_handshakes_last_flight_is_answered(registrar: RunningRegistrar) -> None:
    # The server finishes its handshake and decrypts the request in one read, before
    # start_tls has returned the TLS transport: the request must not be lost.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = insecure_context().wrap_bio(incoming, outgoing, server_hostname="sip.example.test")
    with socket.create_connection((registrar.host, registrar.tls_port), 3, source_address=(UA, 0)) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65535))
        tls.write(OPTIONS)
        sock.sendall(outgoing.read())  # our Finished and the request, in one segment
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                answer += tls.read()
            except ssl.SSLWantReadError:
                data = sock.recv(65535)
                assert data, "closed without an answer"
                incoming.write(data)
    assert answer.startswith(b"SIP/2.0 200 OK")


def test_a_connect_flood_from_one_source_does_not_starve_a_ua_elsewhere(registrar: RunningRegistrar) -> None:
    stop = threading.Event()
    flooded = [0]  # connections the server closed at once

    def flood() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((registrar.host, registrar.sip_port), 1, source_address=(ATTACKER, 0)) as sock:
                    # Reset when done, not closed: no TIME_WAIT holding the port, or the flood runs out of them.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    if closed_by_server(sock):
                        flooded[0] += 1
            except OSError:
                pass  # the backlog overflowed or the server was slow: the flood does its worst

    held = [connect(registrar, ATTACKER) for _ in range(PER_SOURCE)]  # the flood is all over the cap
    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
    for thread in flooders:
        thread.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        for _ in range(3):
            assert status_of(alice(registrar).register("sip:alice@127.0.0.3:5060", 300)) == 200
        took = time.monotonic() - started
    finally:
        stop.set()
        for thread in flooders:
            thread.join()
        for sock in held:
            sock.close()
    assert flooded[0] > 500, "the flood did not flood"
    # A SYN dropped from a full accept queue would be sent again only a second later.
    assert took < 1, f"three registrations took {took:.1f} s under the flood"
    # The server counted each one before closing it.
    assert registrar.metric("sipreg_connections_refused_total", reason="per_source") >= flooded[0]


def insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the registrar runs with its self-signed certificate
    return context


def client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = insecure_context().wrap_bio(incoming, outgoing, server_hostname="sip.example.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()
