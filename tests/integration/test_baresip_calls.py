"""A real baresip calls another real baresip (issue 5).

The first test calls baresip to baresip with no registrar: it checks the driver
(dialling, auto-answer, audio without a sound card, hanging up, the log lines
waited for), so that a failure of the tests through the registrar points at the proxy.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.baresip import BARESIP, CALL_SUMMARY_AFTER, Baresip, TracedMessage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(BARESIP, os.X_OK), reason=f"{BARESIP} not installed (Debian package baresip-core)"),
]

MEDIA = r"^stream: incoming rtp for 'audio' established, receiving from 127\.0\.0\.1:\d+$"
BYE_RECEIVED = "Connection reset by peer"  # baresip's reason for a session the other end closed with a BYE


def requests(ua: Baresip, method: str, *, source: str | None = None, destination: str | None = None) -> list[TracedMessage]:
    """The `method` requests in `ua`'s trace from `source` and/or to `destination` (IP:PORT)."""
    return [
        m for m in ua.sip_trace()
        if m.method == method and source in (None, m.source) and destination in (None, m.destination)
    ]


def responses(ua: Baresip, method: str, *, source: str | None = None, destination: str | None = None) -> list[TracedMessage]:
    """The responses to `method` in `ua`'s trace from `source` and/or to `destination` (IP:PORT)."""
    return [
        m for m in ua.sip_trace()
        if m.status is not None and m.cseq_method == method
        and source in (None, m.source) and destination in (None, m.destination)
    ]


def test_baresip_calls_baresip_directly(tmp_path: Path) -> None:
    """No registrar: alice dials bob's address, bob answers by itself, audio flows, alice hangs up."""
    bob_port = free_port()
    with ExitStack() as stack:
        bob = stack.enter_context(Baresip(
            tmp_path / "bob", user="bob", password="-", domain="127.0.0.1", proxy_host=None, proxy_port=None,
            transport="udp", regint=0, answermode="auto", listen=f"127.0.0.1:{bob_port}",
        ))
        alice = stack.enter_context(Baresip(
            tmp_path / "alice", user="alice", password="-", domain="127.0.0.1", proxy_host=None, proxy_port=None,
            transport="udp", regint=0,
        ))
        bob.wait_for(r"^baresip is ready\.$")
        alice.wait_for(r"^baresip is ready\.$")

        alice.dial(f"sip:bob@127.0.0.1:{bob_port}")
        # baresip adds the account's transport to a dialled URI without one.
        assert alice.wait_call_established().group("peer") == f"sip:bob@127.0.0.1:{bob_port};transport=udp"
        assert bob.wait_call_established().group("peer") == "sip:alice@127.0.0.1"
        alice.wait_for(MEDIA)
        bob.wait_for(MEDIA)

        time.sleep(CALL_SUMMARY_AFTER)
        alice.hangup()
        assert bob.wait_session_closed().group("reason") == BYE_RECEIVED
        assert bob.wait_call_closed().group("peer") == "sip:alice@127.0.0.1"
        assert alice.wait_call_closed().group("peer") == f"sip:bob@127.0.0.1:{bob_port};transport=udp"

    bob_address = f"127.0.0.1:{bob_port}"
    [bye] = requests(alice, "BYE", destination=bob_address)
    [bob_bye] = requests(bob, "BYE", destination=bob_address)
    assert bob_bye.header("Call-ID") == bye.header("Call-ID"), bob.log()
    assert [m.status for m in responses(alice, "BYE")] == [200], alice.log()
