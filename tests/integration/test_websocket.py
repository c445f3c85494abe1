"""SIP over WebSocket (RFC 7118) against a real `sipreg serve`, with aiohttp's WebSocket client.

REGISTER with digest over ws and wss, the `sip` subprotocol and Origin checks, frames that
are not one SIP message, CRLF keep-alives, the connection limits and handshake deadline, and
a call to a user whose WebSocket closed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import ssl
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from registrar.sip import digest
from tests.helpers import RunningRegistrar, one_domain_manifests, serving
from tests.integration.sip_client import UserAgent, status_of
from tests.pki import CertificateAuthority

pytestmark = pytest.mark.integration

BOB_PASSWORD = "bob-secret-2"


def register(user: str, cseq: int, call_id: str, transport: str = "WS", authorization: str | None = None,
             contact_host: str = "df7jal23ls0d.invalid") -> str:
    """A REGISTER as JsSIP writes one: a bogus Via host, a Contact on a .invalid host with transport=ws."""
    lines = [
        "REGISTER sip:sip.example.test SIP/2.0",
        f"Via: SIP/2.0/{transport} {contact_host};branch=z9hG4bK{uuid.uuid4().hex}",
        "Max-Forwards: 69",
        f"To: <sip:{user}@sip.example.test>",
        f"From: <sip:{user}@sip.example.test>;tag={uuid.uuid4().hex[:8]}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}x@{contact_host};transport={transport.lower()}>;expires=600",
    ]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    return "\r\n".join([*lines, "Content-Length: 0", "", ""])


def answer_challenge(challenge: str, user: str, password: str) -> str:
    header = re.search(r"^WWW-Authenticate: Digest (.*)$", challenge, re.M)
    assert header, challenge
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', header.group(1)))
    uri, cnonce = "sip:sip.example.test", uuid.uuid4().hex[:16]
    response = digest.compute_response(
        "MD5", digest.ha1("MD5", user, params["realm"], password), params["nonce"], "REGISTER", uri,
        qop="auth", nc="00000001", cnonce=cnonce,
    )
    return (f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc=00000001')


async def receive_text(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3) -> str:
    message = await ws.receive(timeout)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return message.data


async def register_with_digest(ws: aiohttp.ClientWebSocketResponse, user: str = "bob", password: str = BOB_PASSWORD,
                               transport: str = "WS") -> str:
    call_id = uuid.uuid4().hex
    await ws.send_str(register(user, 1, call_id, transport))
    challenge = await receive_text(ws)
    assert status_of(challenge) == 401, challenge
    await ws.send_str(register(user, 2, call_id, transport, answer_challenge(challenge, user, password)))
    return await receive_text(ws)


def open_by_hand(sock: socket.socket) -> None:
    """The opening handshake with the `sip` subprotocol on a connected socket, byte by byte, up to the 101:
    for a peer aiohttp's client would not play (a frame left half sent, answers never read)."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
                 .encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # no further: what follows the 101 is the server's, not the handshake's
    assert head.startswith(b"HTTP/1.1 101"), head


def ws_url(registrar: RunningRegistrar, scheme: str = "ws") -> str:
    port = registrar.ws_port if scheme == "ws" else registrar.wss_port
    return f"{scheme}://127.0.0.1:{port}/"


async def test_register_over_ws_is_challenged_then_bound_to_the_connection(registrar: RunningRegistrar) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(registrar), protocols=("sip",)) as ws:
        assert ws.protocol == "sip"
        ok = await register_with_digest(ws)
        assert status_of(ok) == 200, ok
        # The Via host is bogus: `received` says where the request came from, and the answer came down the WebSocket.
        assert re.search(r"^Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=\S+;received=127.0.0.1\r$", ok, re.M), ok
        [binding] = registrar.bindings("bob@sip.example.test")
        assert binding["transport"] == "ws" and binding["flow"].startswith("ws-")
        assert registrar.metric("sipreg_connections", transport="ws") == 1
    deadline = time.monotonic() + 3
    while registrar.metric("sipreg_connections", transport="ws") != 0:
        assert time.monotonic() < deadline, "the closed WebSocket is still counted"
        await asyncio.sleep(0.05)


async def test_a_handshake_without_the_sip_subprotocol_is_refused(registrar: RunningRegistrar) -> None:
    async with aiohttp.ClientSession() as session:
        for protocols in ((), ("chat",)):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(ws_url(registrar), protocols=protocols)
            assert refused.value.status == 400
        # Plain HTTP on the WebSocket port is no handshake either; and nothing else is served there.
        async with session.get(ws_url(registrar).replace("ws:", "http:") + "metrics") as response:
            assert response.status == 400
    # What is not even an HTTP GET is closed unanswered (an answer would quote it back); a GET that
    # is no HTTP either is answered 400. Both are counted, without a traceback in the log.
    with socket.create_connection(("127.0.0.1", registrar.ws_port), 3) as raw:
        raw.sendall(b"GARBAGE \x00\x01\r\n\r\n")
        assert raw.recv(100) == b""
    with socket.create_connection(("127.0.0.1", registrar.ws_port), 3) as raw:
        raw.sendall(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.0 400 ")
    assert registrar.metric("sipreg_websocket_handshakes_refused_total", reason="subprotocol") == 2
    assert registrar.metric("sipreg_websocket_handshakes_refused_total", reason="not_websocket") == 3
    assert "Traceback" not in registrar.log() and "GARBAGE" not in registrar.log()


async def test_frames_that_are_not_one_message_are_answered_or_dropped_and_the_listener_serves_on(
    registrar: RunningRegistrar,
) -> None:
    options = ("OPTIONS sip:sip.example.test SIP/2.0\r\nVia: SIP/2.0/WS h.invalid;branch=z9hG4bK-{n}\r\n"
               "From: <sip:x@sip.example.test>;tag=1\r\nTo: <sip:sip.example.test>\r\nCall-ID: frames-{n}\r\n"
               "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(registrar), protocols=("sip",)) as ws:
        await ws.send_bytes(bytes(range(256)) * 4)  # garbage: nothing to answer, dropped
        await ws.send_str(options.format(n=1) + options.format(n=2))  # two messages in one frame
        two = await receive_text(ws)
        assert two.startswith("SIP/2.0 400 More Than One Message\r\n") and "Call-ID: frames-1\r\n" in two, two
        await ws.send_str(options.format(n=3)[:-30])  # half a message: no end of its headers
        half = await receive_text(ws)
        assert status_of(half) == 400 and "Call-ID: frames-3\r\n" in half, half
        await ws.send_str("\r\n\r\n")  # a keep-alive ping gets its pong
        assert await receive_text(ws) == "\r\n"
        await ws.send_str(options.format(n=4))  # and the connection still serves
        answer = await receive_text(ws)
        assert status_of(answer) == 200 and "Call-ID: frames-4\r\n" in answer, answer
        # A message without Content-Length is whole: the frame says where it ends.
        await ws.send_str(options.format(n=5).replace("Content-Length: 0\r\n", ""))
        assert status_of(await receive_text(ws)) == 200
    assert registrar.metric("sipreg_parse_errors_total", transport="ws") == 3
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(registrar), protocols=("sip",)) as ws:
        await ws.send_str(options.format(n=6))
        assert status_of(await receive_text(ws)) == 200
    assert "Traceback" not in registrar.log()


def test_a_peer_that_does_not_read_its_answers_is_closed_before_they_pile_up(tmp_path: Path) -> None:
    # From a trusted address: no rate limit, no ban cuts the requests short.
    manifests = one_domain(tmp_path, "{trustedNetworks: [127.0.0.0/8]}")
    with serving(tmp_path, manifests=manifests) as running:
        _does_not_read(running)
        assert "Traceback" not in running.log() and "source banned" not in running.log()


def _does_not_read(registrar: RunningRegistrar) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lazy:
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        lazy.settimeout(5)
        lazy.connect(("127.0.0.1", registrar.ws_port))
        open_by_hand(lazy)
        assert registrar.metric("sipreg_connections", transport="ws") == 1
        # OPTIONS after OPTIONS, never reading a 200: once the kernel's buffers are full, the answers
        # wait in the registrar, up to 128 KiB, and then the connection goes.
        sent = 0
        try:
            for n in range(40_000):
                request = (f"OPTIONS sip:sip.example.test SIP/2.0\r\nVia: SIP/2.0/WS h.invalid;branch=z9hG4bK-l{n}\r\n"
                           f"From: <sip:x@sip.example.test>;tag=1\r\nTo: <sip:sip.example.test>\r\n"
                           f"Call-ID: lazy-{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                           "Content-Length: 0\r\n\r\n").encode()
                lazy.sendall(bytes([0x81, 0x80 | 126]) + len(request).to_bytes(2, "big") + bytes(4) + request)
                sent += 1
                if n % 500 == 499 and registrar.metric("sipreg_connections", transport="ws") == 0:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the registrar while we wrote
        deadline = time.monotonic() + 5
        while registrar.metric("sipreg_connections", transport="ws") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert registrar.metric("sipreg_connections", transport="ws") == 0, f"still open after {sent} requests"


async def test_an_invite_to_a_user_whose_websocket_closed_gets_480_at_once(registrar: RunningRegistrar) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(registrar), protocols=("sip",)) as ws:
        assert status_of(await register_with_digest(ws)) == 200
    alice = UserAgent(registrar.host, registrar.sip_port, "alice", "alice-secret-1")
    started = time.monotonic()
    answer = await asyncio.to_thread(alice.call, "sip:bob@sip.example.test")
    assert status_of(answer) == 480, answer
    assert time.monotonic() - started < 1.5
    assert registrar.metric("sipreg_unreachable_contacts_total", why="closed") == 1


PER_SOURCE, HANDSHAKE_SECONDS, MESSAGE_SECONDS = 3, 1, 1


def one_domain(tmp_path: Path, security: str) -> Path:
    """sip.example.test alone, with bob: manifests/ will not do (its `ip` connection trusts loopback,
    and its other domain allows any Origin)."""
    return one_domain_manifests(tmp_path / "manifests.yaml", security, "bob", BOB_PASSWORD)


def test_connection_limits_and_the_handshake_deadline_apply_to_websockets(tmp_path: Path) -> None:
    manifests = one_domain(
        tmp_path, f"{{connections: {{perSource: {PER_SOURCE}, handshakeSeconds: {HANDSHAKE_SECONDS}, "
                  f"messageSeconds: {MESSAGE_SECONDS}}}}}"
    )
    with serving(tmp_path, manifests=manifests) as running:
        asyncio.run(_limits(running))
        assert running.metric("sipreg_connections_refused_total", reason="per_source") == 1
        assert running.metric("sipreg_websocket_handshakes_refused_total", reason="timeout") == 1


async def _limits(running: RunningRegistrar) -> None:
    attacker = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), force_close=True)
    async with aiohttp.ClientSession(connector=attacker) as session:
        sockets = [await session.ws_connect(ws_url(running), protocols=("sip",)) for _ in range(PER_SOURCE)]
        # One more from that address is closed at accept, before any handshake (a raw socket: aiohttp's
        # client would try again).
        with socket.create_connection(("127.0.0.1", running.ws_port), 3, source_address=("127.0.0.2", 0)) as extra:
            extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                assert extra.recv(100) == b""
            except ConnectionResetError:
                pass  # aborted: the kernel may say so
        # Another address is served meanwhile.
        async with aiohttp.ClientSession() as other, other.ws_connect(ws_url(running), protocols=("sip",)) as ws:
            assert status_of(await register_with_digest(ws)) == 200
        for ws in sockets:
            await ws.close()
    # A connection that never does its handshake is closed once handshakeSeconds are up.
    with socket.create_connection(("127.0.0.1", running.ws_port), timeout=HANDSHAKE_SECONDS + 3) as idle:
        started = time.monotonic()
        assert idle.recv(1) == b""
        assert HANDSHAKE_SECONDS - 0.2 < time.monotonic() - started < HANDSHAKE_SECONDS + 2
    # A WebSocket frame begun must be whole within messageSeconds, as a message on TCP: a peer that
    # sends a byte now and then would otherwise hold its connection, and its place in the limits.
    with socket.create_connection(("127.0.0.1", running.ws_port), timeout=MESSAGE_SECONDS + 4) as slow:
        open_by_hand(slow)
        slow.sendall(bytes([0x81, 0x80 | 100]) + os.urandom(4) + b"REGISTER s")  # 10 of the 100 bytes it announces
        started = time.monotonic()
        try:
            assert slow.recv(100) == b""
        except ConnectionResetError:
            pass  # aborted: the kernel may say so
        assert MESSAGE_SECONDS - 0.2 < time.monotonic() - started < MESSAGE_SECONDS + 2


def test_wss_registers_with_the_operators_certificate_and_allowed_origins_only(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    server = ca.issue("registrar", server_names=["127.0.0.1"])
    manifests = one_domain(tmp_path, "{webSocketOrigins: [https://phone.example.test]}")
    with serving(tmp_path, "--tls-cert", str(server.cert), "--tls-key", str(server.key), manifests=manifests) as running:
        asyncio.run(_wss(running, ssl.create_default_context(cafile=str(ca.ca_file))))
        assert running.metric("sipreg_websocket_handshakes_refused_total", reason="origin") == 2
        [binding] = running.bindings("bob@sip.example.test")
        assert binding["transport"] == "wss" and binding["flow"].startswith("wss-")


async def _wss(running: RunningRegistrar, context: ssl.SSLContext) -> None:
    async with aiohttp.ClientSession() as session:
        for origin in ("https://evil.example.test", None):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(ws_url(running, "wss"), protocols=("sip",), ssl=context, origin=origin)
            assert refused.value.status == 403
        async with session.ws_connect(ws_url(running, "wss"), protocols=("sip",), ssl=context,
                                      origin="https://phone.example.test") as ws:
            ok = await register_with_digest(ws, transport="WSS")
            assert status_of(ok) == 200 and "Via: SIP/2.0/WSS df7jal23ls0d.invalid;" in ok, ok
            assert running.metric("sipreg_connections", transport="wss") == 1
