"""The UDP listener on a real loopback socket: datagrams that waited too long in the socket buffer are shed unread."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from registrar.app import RegistrarServer, ServeConfig
from registrar.transport import UDP_MAX_WAIT, UdpListener, listen_udp
from tests.fuzzing import DOMAIN, catalog


@dataclass
class Listening:
    server: RegistrarServer
    listener: UdpListener
    client: socket.socket  # a UA's socket, non-blocking

    def send(self, data: bytes, sock: socket.socket | None = None) -> None:
        (sock or self.client).sendto(data, self.listener.sock.getsockname())

    async def answers(self, wait: float = 1.0) -> list[bytes]:
        """Every datagram that comes back to the client until none has for `wait` seconds."""
        received = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                received.append(self.client.recv(65535))
                deadline = time.monotonic() + wait
            except BlockingIOError:
                await asyncio.sleep(0.01)
        return received

    def count(self, metric: str) -> float | None:
        return self.server.metrics.registry.get_sample_value(metric)


@pytest.fixture
async def listening() -> AsyncIterator[Listening]:
    server = RegistrarServer(
        ServeConfig(catalog=catalog(), node="udp", nonce_secret=b"0" * 32, tls_port=None, http_port=None)
    )
    listener, _ = await listen_udp(server.endpoint, "127.0.0.1", 0)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    yield Listening(server, listener, client)
    client.close()
    listener.close()


def options(call_id: str) -> bytes:
    return (
        f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-{call_id}\r\n"
        f"From: <sip:pbx@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_datagrams_that_waited_past_the_bound_are_shed_and_counted_and_fresh_ones_answered(
    listening: Listening,
) -> None:
    listening.send(options("fresh-1"))
    [first] = await listening.answers()
    assert first.startswith(b"SIP/2.0 200 ") and b"fresh-1" in first

    # The event loop stalls (as under overload) while three requests wait in the buffer.
    for n in range(3):
        listening.send(options(f"stale-{n}"))
    time.sleep(UDP_MAX_WAIT + 0.1)
    listening.send(options("fresh-2"))  # arrives after the stall: not stale
    [second] = await listening.answers()
    assert second.startswith(b"SIP/2.0 200 ") and b"fresh-2" in second
    assert listening.count("sipreg_udp_stale_shed_total") == 3


async def test_an_answer_that_cannot_be_delivered_and_junk_leave_the_listener_reading(listening: Listening) -> None:
    # The answer to this one goes to a port closed meanwhile (an ICMP port unreachable comes back).
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))
    listening.send(options("to-a-closed-port"), gone)
    gone.close()
    listening.send(b"\x00" * 10)  # junk: dropped
    listening.send(options("after"))
    [answer] = await listening.answers()
    assert b"after" in answer
    assert listening.count("sipreg_internal_errors_total") == 0
