"""RFC 5626 outbound with a real phone: baresip (sipnat=outbound) over TCP, its flow, and the flow's end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import RunningRegistrar
from tests.integration.baresip import Baresip
from tests.integration.sip_client import UserAgent, status_of

pytestmark = pytest.mark.integration

DOMAIN = "sip.example.test"


def test_an_outbound_phone_gets_its_flow_and_a_call_to_it_after_the_flow_dies_is_refused_at_once(
    registrar: RunningRegistrar, tmp_path: Path,
) -> None:
    bob = Baresip(tmp_path / "bob", user="bob", password="bob-secret-2", domain=DOMAIN, proxy_host=registrar.host,
                  proxy_port=registrar.sip_port, transport="tcp", sipnat="outbound")
    with bob:  # (started by entering)
        # Not bob.wait_registered(): with outbound on, baresip's status line and its -s trace of the
        # 200 OK come out interleaved mid-line. The registrar's table says it as well.
        deadline = time.monotonic() + 15
        while not registrar.bindings(f"bob@{DOMAIN}") and time.monotonic() < deadline:
            time.sleep(0.1)
        [binding] = registrar.bindings(f"bob@{DOMAIN}")
        # The 200 OK as baresip printed it (-s): read as text, as its lines may come out interleaved
        # with baresip's status lines, and a little after the binding exists.
        while not ("Require: outbound" in bob.raw_log() and "Flow-Timer: 120" in bob.raw_log()) \
                and time.monotonic() < deadline + 5:
            time.sleep(0.1)
        assert "Require: outbound" in bob.raw_log() and "Flow-Timer: 120" in bob.raw_log(), bob.raw_log()
        assert binding["regId"] == 1 and binding["instance"] and binding["transport"] == "tcp"
        bob.kill()  # the phone dies: its TCP connection closes, its binding stays until it expires
    deadline = time.monotonic() + 5
    while registrar.metric("sipreg_connections", transport="tcp") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel's FIN reaches the registrar
    alice = UserAgent(registrar.host, registrar.sip_port, "alice", "alice-secret-1", local_ip="127.0.0.91")
    started = time.monotonic()
    answer = alice.call(f"sip:bob@{DOMAIN}", timeout=10)
    assert status_of(answer) == 480, answer  # at once: no INVITE down a dead connection, no Timer B
    assert time.monotonic() - started < 2.0
    assert registrar.metric("sipreg_unreachable_contacts_total", why="closed") == 1
