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
    # Shorter than the defaults, so that a test makes a queue stand in a second.
    listener.max_wait, listener.standing_wait, listener.standing_interval = 0.1, 0.02, 0.2
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


async def test_a_stall_leaves_a_backlog_that_is_answered_in_full(listening: Listening) -> None:
    listening.send(options("before"))
    assert len(await listening.answers(0.3)) == 1
    # The event loop stalls (a slow moment of the machine) while three requests wait, longer than max_wait.
    for n in range(3):
        listening.send(options(f"waited-{n}"))
    time.sleep(listening.listener.max_wait + 0.1)
    answers = await listening.answers(0.3)
    assert sorted(answer.split(b"Call-ID: ")[1].split(b"\r\n")[0] for answer in answers) == [
        b"waited-0", b"waited-1", b"waited-2"
    ]
    assert not listening.listener.standing
    assert listening.count("sipreg_udp_stale_shed_total") == 0


async def test_while_a_queue_stands_datagrams_that_waited_past_the_bound_are_shed_and_counted(
    listening: Listening,
) -> None:
    listener = listening.listener
    # More than the registrar can answer: every request waits longer than standing_wait, for
    # longer than an interval (the stalls stand for the work ahead of each one).
    deadline = time.monotonic() + 3 * listener.standing_interval
    sent = answered = 0
    while time.monotonic() < deadline:
        listening.send(options(f"busy-{sent}"))
        sent += 1
        time.sleep(listener.standing_wait * 2)
        answered += len(await listening.answers(0.01))
    answered += len(await listening.answers(0.1))
    assert listener.standing and answered == sent  # all answered: none waited past max_wait
    assert listening.count("sipreg_udp_stale_shed_total") == 0
    # Now three wait past max_wait: shed unread; the one after them is answered.
    for n in range(3):
        listening.send(options(f"stale-{n}"))
    time.sleep(listener.max_wait + 0.05)
    listening.send(options("fresh"))
    time.sleep(listener.standing_wait * 2)  # still standing: it too waited, if less than max_wait
    answers = await listening.answers(0.3)
    assert [answer.split(b"Call-ID: ")[1].split(b"\r\n")[0] for answer in answers] == [b"fresh"]
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
