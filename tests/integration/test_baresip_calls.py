"""A real baresip calls another real baresip through a real `sipreg serve`, both registered over TLS (issue 5).

alice and bob register over TLS (manifests/ passwords); alice dials
`sip:bob@sip.example.test` through her outbound proxy, the registrar, which
proxies the INVITE down bob's TLS connection; bob answers by himself. The tests
assert on baresip's log lines (see tests/integration/baresip.py) and on its SIP
trace, which shows the transport and the addresses each message went over.

The first test calls baresip to baresip with no registrar: it checks the driver
(dialling, auto-answer, audio without a sound card, hanging up, the log lines
waited for), so that a failure of the other tests points at the proxy.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.integration.baresip import BARESIP, CALL_SUMMARY_AFTER, Baresip, TracedMessage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.access(BARESIP, os.X_OK), reason=f"{BARESIP} not installed (Debian package baresip-core)",
    ),
]

DOMAIN = "sip.example.test"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2"}  # manifests/connections.yaml
MEDIA = r"^stream: incoming rtp for 'audio' established, receiving from 127\.0\.0\.1:\d+$"
BYE_RECEIVED = "Connection reset by peer"  # baresip's reason for a session the other end ended (BYE or CANCEL)
BOB = f"sip:bob@{DOMAIN};transport=tls"  # what alice dials becomes: baresip adds the account's transport


def requests(
    ua: Baresip, method: str, *, source: str | None = None, destination: str | None = None,
) -> list[TracedMessage]:
    """The `method` requests in `ua`'s trace from `source` and/or to `destination` (IP:PORT)."""
    return [
        m for m in ua.sip_trace()
        if m.method == method and source in (None, m.source) and destination in (None, m.destination)
    ]


def responses(
    ua: Baresip, method: str, *, source: str | None = None, destination: str | None = None,
) -> list[TracedMessage]:
    """The responses to `method` in `ua`'s trace from `source` and/or to `destination` (IP:PORT)."""
    return [
        m for m in ua.sip_trace()
        if m.status is not None and m.cseq_method == method
        and source in (None, m.source) and destination in (None, m.destination)
    ]


def uri_of(name_addr: str | None) -> str:
    """`sip:...` out of `<sip:...>;params` (baresip writes Contact and Route in angle brackets)."""
    match = re.match(r"\s*<([^>]*)>", name_addr or "")
    assert match, name_addr
    return match.group(1)


def test_baresip_calls_baresip_directly(tmp_path: Path) -> None:
    """No registrar: alice dials bob's address, bob answers by itself, audio flows, alice hangs up."""
    bob_port = free_port()
    direct = dict(password="-", domain="127.0.0.1", proxy_host=None, proxy_port=None, transport="udp", regint=0)
    with (
        Baresip(tmp_path / "bob", user="bob", answermode="auto", listen=f"127.0.0.1:{bob_port}", **direct) as bob,
        Baresip(tmp_path / "alice", user="alice", **direct) as alice,
    ):
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


def phone(registrar, tmp_path: Path, user: str, answermode: str = "manual", transport: str = "tls") -> Baresip:
    """`user`'s baresip, registering over `transport` to the registrar, which is its outbound proxy for calls too."""
    return Baresip(
        tmp_path / user, user=user, password=PASSWORDS[user], domain=DOMAIN, proxy_host=registrar.host,
        proxy_port=registrar.tls_port if transport == "tls" else registrar.sip_port, transport=transport,
        answermode=answermode,
    )


def registered(*phones: Baresip) -> None:
    for ua in phones:
        assert ua.wait_registered().group("transport") == ua.transport.upper(), ua.log()


@pytest.fixture
def phones(registrar, tmp_path: Path) -> Iterator[tuple[Baresip, Baresip]]:
    """alice and bob (who answers by himself), both registered over TLS; stopped afterwards whatever happens."""
    with phone(registrar, tmp_path, "alice") as alice, phone(registrar, tmp_path, "bob", "auto") as bob:
        registered(alice, bob)
        yield alice, bob


def flow(registrar, ua: Baresip) -> str:
    """IP:PORT of `ua`'s end of the TLS connection it registered on."""
    return requests(ua, "REGISTER", destination=f"{registrar.host}:{registrar.tls_port}")[0].source


def assert_one_connection(registrar, ua: Baresip) -> None:
    """Everything the registrar sent `ua` came down the connection `ua` opened: never a new one to its Contact."""
    registrar_tls = f"{registrar.host}:{registrar.tls_port}"
    from_registrar = [m for m in ua.sip_trace() if m.source == registrar_tls]
    assert {(m.transport, m.destination) for m in from_registrar} == {("TLS", flow(registrar, ua))}, ua.log()
    to_registrar = [m for m in ua.sip_trace() if m.destination == registrar_tls]
    assert len(from_registrar) + len(to_registrar) == len(ua.sip_trace()), ua.log()


def assert_call_went_through_registrar(registrar, alice: Baresip, bob: Baresip) -> None:
    """Both ends are up: the INVITE, its 200 OK and the ACK each went through the registrar over TLS."""
    registrar_tls = f"{registrar.host}:{registrar.tls_port}"
    alice_flow, bob_flow = flow(registrar, alice), flow(registrar, bob)

    # alice's INVITE went up her TLS connection to the registrar; she got 100 Trying and the 200 OK back on it.
    [invite] = requests(alice, "INVITE")
    assert (invite.transport, invite.source, invite.destination) == ("TLS", alice_flow, registrar_tls), invite
    assert invite.request_uri == BOB, invite
    statuses = [(m.status, m.source, m.destination) for m in responses(alice, "INVITE")]
    assert (100, registrar_tls, alice_flow) in statuses and (200, registrar_tls, alice_flow) in statuses, statuses

    # bob's INVITE came from the registrar down the TLS connection bob registered on, to the
    # Contact he registered, with one Record-Route naming the registrar's TLS address.
    [forwarded] = requests(bob, "INVITE")
    assert (forwarded.transport, forwarded.source, forwarded.destination) == ("TLS", registrar_tls, bob_flow), forwarded
    [binding] = registrar.bindings(f"bob@{DOMAIN}")
    assert forwarded.request_uri == binding["contact"], (forwarded.text, binding)
    assert forwarded.header("Call-ID") == invite.header("Call-ID"), forwarded
    assert int(forwarded.header("Max-Forwards")) == int(invite.header("Max-Forwards")) - 1, forwarded
    [record_route] = forwarded.headers("Record-Route")
    assert re.fullmatch(rf"<sip:([^@>]*@)?{re.escape(registrar_tls)};[^>]*>", record_route), record_route
    assert ";transport=tls" in record_route.lower() and ";lr" in record_route, record_route

    # The Record-Route came back to alice in the 200 OK, and her ACK followed it through the registrar to bob.
    [ok] = [m for m in responses(alice, "INVITE") if m.status == 200]
    assert ok.headers("Record-Route") == [record_route], ok
    [ack] = requests(alice, "ACK")
    assert (ack.destination, ack.headers("Route")) == (registrar_tls, [record_route]), ack
    [bob_ack] = requests(bob, "ACK")
    assert (bob_ack.transport, bob_ack.source, bob_ack.destination) == ("TLS", registrar_tls, bob_flow), bob_ack
    assert bob_ack.header("Call-ID") == invite.header("Call-ID"), bob_ack


def test_alice_calls_bob_through_the_registrar_over_tls_and_hangs_up(registrar, phones) -> None:
    alice, bob = phones

    alice.dial(f"sip:bob@{DOMAIN}")
    assert alice.wait_call_established().group("peer") == BOB
    assert bob.wait_call_established().group("peer") == f"sip:alice@{DOMAIN}"
    # The SDP went through the proxy intact: RTP flows UA to UA both ways.
    alice.wait_for(MEDIA)
    bob.wait_for(MEDIA)
    assert_call_went_through_registrar(registrar, alice, bob)

    time.sleep(CALL_SUMMARY_AFTER)
    alice.hangup()
    assert bob.wait_session_closed().group("reason") == BYE_RECEIVED
    assert bob.wait_call_closed().group("peer") == f"sip:alice@{DOMAIN}"
    assert alice.wait_call_closed().group("peer") == BOB

    # alice's BYE followed the route set to the registrar, which sent it down bob's connection to
    # the Contact of his 200 OK; bob's 200 OK to the BYE came back to alice.
    registrar_tls = f"{registrar.host}:{registrar.tls_port}"
    [forwarded] = requests(bob, "INVITE")
    [bye] = requests(alice, "BYE")
    assert (bye.destination, bye.headers("Route")) == (registrar_tls, forwarded.headers("Record-Route")), bye
    [bob_bye] = requests(bob, "BYE")
    assert (bob_bye.transport, bob_bye.source, bob_bye.destination) == ("TLS", registrar_tls, flow(registrar, bob))
    [bob_ok] = [m for m in responses(bob, "INVITE", source=flow(registrar, bob)) if m.status == 200]
    assert bob_bye.request_uri == uri_of(bob_ok.header("Contact")), (bob_bye, bob_ok)
    assert bob_bye.header("Call-ID") == forwarded.header("Call-ID"), bob_bye
    assert [(m.status, m.source) for m in responses(alice, "BYE")] == [(200, registrar_tls)], alice.log()
    assert_one_connection(registrar, alice)
    assert_one_connection(registrar, bob)


def test_bob_hangs_up_a_call_from_alice_through_the_registrar(registrar, phones) -> None:
    alice, bob = phones

    alice.dial(f"sip:bob@{DOMAIN}")
    alice.wait_call_established()
    bob.wait_call_established()
    assert_call_went_through_registrar(registrar, alice, bob)

    time.sleep(CALL_SUMMARY_AFTER)
    bob.hangup()
    assert alice.wait_session_closed().group("reason") == BYE_RECEIVED
    assert alice.wait_call_closed().group("peer") == BOB
    assert bob.wait_call_closed().group("peer") == f"sip:alice@{DOMAIN}"

    # bob's BYE followed the route set to the registrar, which sent it down the connection
    # alice's INVITE went up (never a new connection), to the Contact her INVITE carried.
    registrar_tls = f"{registrar.host}:{registrar.tls_port}"
    [invite] = requests(alice, "INVITE")
    [bye] = requests(bob, "BYE")
    [forwarded] = requests(bob, "INVITE")
    assert (bye.destination, bye.headers("Route")) == (registrar_tls, forwarded.headers("Record-Route")), bye
    [alice_bye] = requests(alice, "BYE")
    assert (alice_bye.transport, alice_bye.source, alice_bye.destination) == ("TLS", registrar_tls, invite.source)
    assert alice_bye.request_uri == uri_of(invite.header("Contact")), (alice_bye, invite)
    assert alice_bye.header("Call-ID") == invite.header("Call-ID"), alice_bye
    assert [(m.status, m.source) for m in responses(bob, "BYE")] == [(200, registrar_tls)], bob.log()
    assert_one_connection(registrar, alice)
    assert_one_connection(registrar, bob)


def test_alice_cancels_while_bob_rings(registrar, tmp_path: Path) -> None:
    """bob does not answer: alice's hangup is a CANCEL, which the registrar passes on to bob's branch."""
    with phone(registrar, tmp_path, "alice") as alice, phone(registrar, tmp_path, "bob") as bob:
        registered(alice, bob)
        alice.dial(f"sip:bob@{DOMAIN}")
        assert bob.wait_incoming_call().group("peer") == f"sip:alice@{DOMAIN}"
        alice.wait_for(r"^call: SIP Progress: 180 Ringing.*$")

        alice.hangup()
        assert bob.wait_session_closed().group("reason") == BYE_RECEIVED
        alice.wait_for(r"^SIP/2\.0 487 Request Terminated$")
        alice.wait_for(r"^ACK sip:")
        bob.wait_for(r"^ACK sip:")

    registrar_tls = f"{registrar.host}:{registrar.tls_port}"
    bob_flow = flow(registrar, bob)
    # alice: the CANCEL is answered 200 by the registrar, and her INVITE 487, which she ACKs.
    [cancel] = requests(alice, "CANCEL")
    assert cancel.destination == registrar_tls, cancel
    assert [m.status for m in responses(alice, "CANCEL", source=registrar_tls)] == [200], alice.log()
    assert [m.status for m in responses(alice, "INVITE", source=registrar_tls)][-1] == 487, alice.log()
    # bob: a CANCEL for the INVITE he got, down his connection; his 487 is ACKed by the registrar (hop by hop).
    [forwarded] = requests(bob, "INVITE")
    [bob_cancel] = requests(bob, "CANCEL")
    assert (bob_cancel.transport, bob_cancel.source, bob_cancel.destination) == ("TLS", registrar_tls, bob_flow)
    assert bob_cancel.request_uri == forwarded.request_uri, (bob_cancel, forwarded)
    assert bob_cancel.headers("Via")[0] == forwarded.headers("Via")[0], (bob_cancel, forwarded)
    assert [(m.status, m.destination) for m in responses(bob, "CANCEL")] == [(200, registrar_tls)], bob.log()
    assert 487 in [m.status for m in responses(bob, "INVITE", destination=registrar_tls)], bob.log()
    [bob_ack] = requests(bob, "ACK")
    assert (bob_ack.source, bob_ack.destination) == (registrar_tls, bob_flow), bob_ack
    assert bob_ack.header("CSeq").split()[0] == forwarded.header("CSeq").split()[0], (bob_ack, forwarded)
    assert "Call established" not in alice.log() + bob.log()


def test_calls_to_a_user_not_registered_or_unknown_fail_with_480_and_404(registrar, tmp_path: Path) -> None:
    with phone(registrar, tmp_path, "alice") as alice:
        registered(alice)
        alice.dial(f"sip:carol@{DOMAIN}")  # carol is a SipConnection, but nothing of hers registered
        closed = alice.wait_session_closed()
        assert closed.group("reason") == "480 Temporarily Unavailable", alice.log()
        alice.dial(f"sip:nobody@{DOMAIN}")
        assert alice.wait_session_closed(since=closed.end()).group("reason") == "404 Not Found", alice.log()
        assert "Call established" not in alice.log()
        # Each refusal is one answer (no 100 Trying: nothing was forwarded), and each was ACKed.
        assert [m.status for m in responses(alice, "INVITE")] == [480, 404], alice.log()
        alice.wait_for(r"^ACK sip:nobody@")
    assert len(requests(alice, "ACK")) == 2, alice.log()


@pytest.mark.parametrize("bob_transport", ["udp", "tcp"])
def test_a_call_from_tls_to_another_transport_is_record_routed_twice(registrar, tmp_path: Path, bob_transport) -> None:
    """alice on TLS, bob on UDP or TCP: the registrar records a route on each side, and bob's BYE takes both."""
    with (
        phone(registrar, tmp_path, "alice") as alice,
        phone(registrar, tmp_path, "bob", "auto", transport=bob_transport) as bob,
    ):
        registered(alice, bob)
        alice.dial(f"sip:bob@{DOMAIN}")
        alice.wait_call_established()
        bob.wait_call_established()
        time.sleep(CALL_SUMMARY_AFTER)
        bob.hangup()
        assert alice.wait_session_closed().group("reason") == BYE_RECEIVED
        bob.wait_call_closed()
        alice.wait_call_closed()

        registrar_sip = f"{registrar.host}:{registrar.sip_port}"
        registrar_tls = f"{registrar.host}:{registrar.tls_port}"
        [forwarded] = requests(bob, "INVITE")
        assert (forwarded.transport, forwarded.source) == (bob_transport.upper(), registrar_sip), forwarded
        # Topmost first: the entry facing bob (his transport, the SIP port), then the one facing alice.
        bob_side, alice_side = forwarded.headers("Record-Route")
        assert f"@{registrar_sip};transport={bob_transport};lr" in bob_side, forwarded
        assert f"@{registrar_tls};transport=tls;lr" in alice_side, forwarded
        [ok] = [m for m in responses(alice, "INVITE") if m.status == 200]
        assert ok.headers("Record-Route") == [bob_side, alice_side], ok
        # bob's BYE is routed by both entries; it reaches alice down the TLS connection her INVITE went up.
        [bye] = requests(bob, "BYE")
        assert (bye.destination, bye.headers("Route")) == (registrar_sip, [bob_side, alice_side]), bye
        [invite] = requests(alice, "INVITE")
        [alice_bye] = requests(alice, "BYE")
        assert (alice_bye.transport, alice_bye.source, alice_bye.destination) == ("TLS", registrar_tls, invite.source)
        assert alice_bye.request_uri == uri_of(invite.header("Contact")), (alice_bye, invite)
        assert [(m.status, m.source) for m in responses(bob, "BYE")] == [(200, registrar_sip)], bob.log()
