"""Unit tests for registrar.sip.transaction: transaction keys, the four RFC 3261 machines, the layer that keeps them.

Time is a number the tests pass in; nothing sleeps.
"""

from __future__ import annotations

import gc

import pytest

from registrar.sip.message import Request, Response, make_response, parse_message
from registrar.sip.source import Destination
from registrar.sip.transaction import (
    ACCEPTED,
    CALLING,
    COMPLETED,
    CONFIRMED,
    EXPIRE_EVERY,
    INITIAL_STATE,
    MAGIC_COOKIE,
    PROCEEDING,
    T1,
    T2,
    T4,
    TERMINATED,
    TICKS_PER_SECOND,
    TIMEOUT,
    TRANSITIONS,
    TRYING,
    PassUp,
    Send,
    TimedOut,
    TransactionLayer,
    transaction_key,
)


def make_request(
    method: str = "REGISTER",
    *,
    via: str = "SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK776asdhds",
    cseq: str | None = None,
    call_id: str = "a84b4c76e66710@pc33.example.com",
    from_: str = "<sip:alice@example.com>;tag=1928301774",
    uri: str = "sip:example.com",
    extra: tuple[str, ...] = (),
) -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        f"From: {from_}",
        "To: <sip:alice@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq or '1 ' + method}",
        *extra,
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


# --- transaction_key: RFC 3261 17.2.3 ----------------------------------------------------------


def test_rfc3261_key_is_branch_sent_by_and_method() -> None:
    key = transaction_key(make_request())
    assert key == ("z9hG4bK776asdhds", "192.0.2.10:5060", "REGISTER")
    assert key[0].startswith(MAGIC_COOKIE)


def test_a_retransmission_has_the_same_key() -> None:
    assert transaction_key(make_request()) == transaction_key(make_request())


def test_received_and_rport_added_by_us_do_not_change_the_key() -> None:
    fixed = make_request(via="SIP/2.0/UDP 192.0.2.10:5060;rport=40000;branch=z9hG4bK776asdhds;received=198.51.100.1")
    assert transaction_key(fixed) == transaction_key(make_request())


def test_only_the_top_via_counts() -> None:
    two = make_request(via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds, SIP/2.0/UDP inner;branch=z9hG4bKinner")
    assert transaction_key(two) == ("z9hG4bK776asdhds", "192.0.2.10:5060", "REGISTER")


def test_branch_parameter_with_whitespace_and_any_position() -> None:
    spaced = make_request(via="SIP/2.0/UDP 192.0.2.10:5060 ; rport ; Branch = z9hG4bK776asdhds")
    assert transaction_key(spaced) == ("z9hG4bK776asdhds", "192.0.2.10:5060", "REGISTER")


def test_a_different_branch_is_a_different_transaction() -> None:
    other = make_request(via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKother")
    assert transaction_key(other) != transaction_key(make_request())


def test_the_same_branch_from_another_sent_by_is_a_different_transaction() -> None:
    # Branches are only unique per UA: sent-by is part of the key.
    other = make_request(via="SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bK776asdhds")
    assert transaction_key(other) != transaction_key(make_request())


def test_cancel_has_its_own_transaction() -> None:
    invite = make_request("INVITE", uri="sip:bob@example.com")
    cancel = make_request("CANCEL", uri="sip:bob@example.com")
    assert transaction_key(cancel) != transaction_key(invite)
    assert transaction_key(cancel)[2] == "CANCEL"


def test_ack_maps_to_the_invite_transaction() -> None:
    invite = make_request("INVITE", uri="sip:bob@example.com")
    ack = make_request("ACK", uri="sip:bob@example.com", cseq="1 ACK")
    assert transaction_key(ack) == transaction_key(invite)
    assert transaction_key(ack)[2] == "INVITE"


# --- transaction_key: RFC 2543 fallback (no magic cookie) ------------------------------------------


def test_rfc2543_request_without_branch_falls_back_to_the_old_matching() -> None:
    old = make_request(via="SIP/2.0/UDP 192.0.2.10:5060")
    assert transaction_key(old) == (
        "a84b4c76e66710@pc33.example.com", "1", "1928301774", "SIP/2.0/UDP 192.0.2.10:5060", "sip:example.com", "REGISTER",
    )


def test_branch_without_magic_cookie_falls_back_too() -> None:
    # RFC 4475 wsinv's first Via: branch=390skdjuw is an RFC 2543-style branch.
    old = make_request(via="SIP/2.0/UDP 192.0.2.2;branch=390skdjuw")
    key = transaction_key(old)
    assert len(key) == 6
    assert key[0] == "a84b4c76e66710@pc33.example.com"
    assert key == transaction_key(make_request(via="SIP/2.0/UDP 192.0.2.2;branch=390skdjuw"))


@pytest.mark.parametrize(
    "change",
    [
        {"call_id": "other@pc33.example.com"},
        {"cseq": "2 REGISTER"},
        {"from_": "<sip:alice@example.com>;tag=other"},
        {"uri": "sip:other.example.com"},
        {"via": "SIP/2.0/UDP 192.0.2.11:5060"},
    ],
)
def test_rfc2543_keys_differ_when_any_matching_field_differs(change: dict[str, str]) -> None:
    base = transaction_key(make_request(via="SIP/2.0/UDP 192.0.2.10:5060"))
    arguments = {"via": "SIP/2.0/UDP 192.0.2.10:5060", **change}
    assert transaction_key(make_request(**arguments)) != base


def test_rfc2543_ack_maps_to_the_invite_transaction() -> None:
    via = "SIP/2.0/UDP 192.0.2.10:5060"
    invite = make_request("INVITE", via=via, cseq="7 INVITE", uri="sip:bob@example.com")
    ack = make_request("ACK", via=via, cseq="7 ACK", uri="sip:bob@example.com")
    assert transaction_key(ack) == transaction_key(invite)


def test_rfc2543_from_without_tag() -> None:
    key = transaction_key(make_request(via="SIP/2.0/UDP 192.0.2.10", from_="sip:alice@example.com"))
    assert key[2] == ""


# --- the machines as data ---------------------------------------------------------------------------


def test_every_state_of_every_machine_is_reached_and_terminated_is_the_end() -> None:
    reached = {(kind, state) for kind, state in INITIAL_STATE.items()}
    reached |= {(kind, new) for (kind, _, _), (new, _) in TRANSITIONS.items()}
    assert reached >= {
        ("INVITE client", CALLING), ("INVITE client", PROCEEDING), ("INVITE client", COMPLETED),
        ("INVITE client", ACCEPTED), ("INVITE client", TERMINATED),
        ("non-INVITE client", TRYING), ("non-INVITE client", PROCEEDING), ("non-INVITE client", COMPLETED),
        ("non-INVITE client", TERMINATED),
        ("INVITE server", PROCEEDING), ("INVITE server", COMPLETED), ("INVITE server", CONFIRMED),
        ("INVITE server", ACCEPTED), ("INVITE server", TERMINATED),
        ("non-INVITE server", TRYING), ("non-INVITE server", PROCEEDING), ("non-INVITE server", COMPLETED),
        ("non-INVITE server", TERMINATED),
    }
    assert not [key for key in TRANSITIONS if key[1] == TERMINATED]


UA = Destination("udp", "192.0.2.10", 5060)
UA_TCP = Destination("tcp", "192.0.2.10", 40000, "tcp-1")


def sent(effects: list) -> list[bytes]:
    assert all(isinstance(effect, Send) for effect in effects), effects
    return [effect.data for effect in effects]


# --- server transactions ---------------------------------------------------------------------------


def test_a_non_invite_request_over_udp_absorbed_then_answered_again_with_the_same_bytes_until_timer_j() -> None:
    layer = TransactionLayer()
    assert layer.receive_request(KEY, "REGISTER", 100.0) is None  # new
    transaction = layer.begin_server(KEY, "REGISTER", UA)
    assert layer.receive_request(KEY, "REGISTER", 100.1) == []  # in progress: absorbed
    answer = b"SIP/2.0 200 OK\r\n\r\n"
    assert sent(layer.respond(transaction, 200, answer, 100.2)) == [answer]
    assert not layer.servers  # retired: only a tuple is left
    again = layer.receive_request(KEY, "REGISTER", 100.2 + TIMEOUT - 0.1)
    assert sent(again) == [answer] and again[0].destination == UA and again[0].data is answer
    assert layer.receive_request(KEY, "REGISTER", 100.2 + TIMEOUT) is None  # Timer J: a new request now
    assert layer.receive_request(OTHER, "REGISTER", 101.0) is None


def test_over_tcp_nothing_is_kept_once_answered() -> None:
    layer = TransactionLayer()
    transaction = layer.begin_server(KEY, "REGISTER", UA_TCP)
    assert sent(layer.respond(transaction, 200, b"200", 1.0)) == [b"200"]
    assert not layer.servers and not layer.answered  # Timer J is zero on a reliable transport


def test_a_provisional_then_a_final_from_a_non_invite_server() -> None:
    layer = TransactionLayer()
    transaction = layer.begin_server(KEY, "MESSAGE", UA)
    layer.respond(transaction, 100, b"100", 1.0)
    assert transaction.state == PROCEEDING
    assert sent(layer.receive_request(KEY, "MESSAGE", 1.1)) == [b"100"]
    layer.respond(transaction, 404, b"404", 1.2)
    assert sent(layer.receive_request(KEY, "MESSAGE", 1.3)) == [b"404"]


INVITE_KEY = ("z9hG4bKinv", "192.0.2.10:5060", "INVITE")


def test_an_invite_failure_is_resent_by_timer_g_until_the_ack_then_absorbed_until_timer_i() -> None:
    layer = TransactionLayer()
    transaction = layer.begin_server(INVITE_KEY, "INVITE", UA)
    layer.respond(transaction, 100, b"100", 0.0)
    assert sent(layer.respond(transaction, 486, b"486", 0.0)) == [b"486"]
    assert transaction.state == COMPLETED
    resent_at = []
    now = 0.0
    while now < 12.0:
        now += 0.25
        if layer.advance(now):
            resent_at.append(now)
    assert resent_at == [0.5, 1.5, 3.5, 7.5, 11.5]  # T1, doubling, at most T2 apart
    assert sent(layer.receive_request(INVITE_KEY, "INVITE", now)) == [b"486"]
    assert layer.receive_request(INVITE_KEY, "ACK", now) == []
    assert layer.state_of(INVITE_KEY, now) == CONFIRMED and not layer.servers
    assert layer.receive_request(INVITE_KEY, "ACK", now + T4 - 0.1) == []  # absorbed
    assert layer.advance(now + 10) == []  # Timer G is over
    assert layer.receive_request(INVITE_KEY, "ACK", now + T4) is None  # Timer I: over


def test_an_invite_failure_never_acked_ends_at_timer_h_and_the_tu_hears_of_it() -> None:
    layer = TransactionLayer()
    transaction = layer.begin_server(INVITE_KEY, "INVITE", UA, owner="context")
    layer.respond(transaction, 486, b"486", 0.0)
    effects = layer.advance(TIMEOUT)
    assert TimedOut("context", "H") in effects and not layer.servers and not layer.answered


def test_after_a_2xx_the_invite_is_accepted_more_2xx_pass_and_a_retransmitted_invite_gets_the_last() -> None:
    layer = TransactionLayer()
    transaction = layer.begin_server(INVITE_KEY, "INVITE", UA)
    layer.respond(transaction, 200, b"200 a", 0.0)
    assert layer.state_of(INVITE_KEY, 1.0) == ACCEPTED
    assert layer.advance(10.0) == []  # no Timer G: the TU repeats a 2xx, not the transaction (RFC 6026)
    assert sent(layer.respond(transaction, 200, b"200 b", 1.0)) == [b"200 b"]  # another fork's
    assert sent(layer.receive_request(INVITE_KEY, "INVITE", 2.0)) == [b"200 b"]
    assert layer.state_of(INVITE_KEY, 1.0 + TIMEOUT) is None  # Timer L


# --- client transactions ---------------------------------------------------------------------------

CLIENT_KEY = ("z9hG4bK-sr1", "INVITE")


def client_invite() -> Request:
    return make_request("INVITE", via="SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-sr1", uri="sip:bob@192.0.2.20")


def test_an_invite_is_resent_by_timer_a_until_a_provisional_and_times_out_by_timer_b() -> None:
    layer = TransactionLayer()
    _, first = layer.begin_client(CLIENT_KEY, client_invite(), UA, "branch", 0.0)
    assert len(sent(first)) == 1
    resent = [now for now in (0.5, 1.5, 3.5, 7.5, 15.5, 31.5) if sent(layer.advance(now))]
    assert resent == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert layer.advance(TIMEOUT) == [TimedOut("branch", "B")] and not layer.clients

    layer = TransactionLayer()
    layer.begin_client(CLIENT_KEY, client_invite(), UA, "branch", 0.0)
    ringing = make_response(client_invite(), 180, "Ringing", to_tag="b")
    assert layer.receive_response(CLIENT_KEY, ringing, 0.1) == [PassUp("branch", ringing, None)]
    assert layer.advance(60.0) == []  # no more Timer A, and no Timer B in Proceeding (Timer C is the proxy's)


def test_an_invite_failure_is_acked_once_passed_up_once_and_acked_again_when_it_comes_again() -> None:
    layer = TransactionLayer()
    request = client_invite()
    layer.begin_client(CLIENT_KEY, request, UA, "branch", 0.0)
    busy = make_response(request, 486, "Busy Here", to_tag="b")
    effects = layer.receive_response(CLIENT_KEY, busy, 0.1)
    [ack, passed] = effects
    assert passed == PassUp("branch", busy, None)
    message = parse_message(ack.data)
    assert (message.method, message.uri, message.get("CSeq")) == ("ACK", request.uri, "1 ACK")
    assert message.get("Via") == request.get("Via") and message.name_addr("To").tag == "b"
    assert not layer.clients  # retired
    assert sent(layer.receive_response(CLIENT_KEY, busy, 10.0)) == [ack.data]  # not passed up again
    assert layer.receive_response(CLIENT_KEY, busy, 32.1) is None  # Timer D


def test_a_2xx_after_the_branch_retired_goes_to_where_its_first_went() -> None:
    layer = TransactionLayer()
    upstream = Destination("udp", "192.0.2.1", 5062)
    layer.begin_client(CLIENT_KEY, client_invite(), UA, "branch", 0.0, upstream=upstream)
    ok = make_response(client_invite(), 200, "OK", to_tag="b")
    assert layer.receive_response(CLIENT_KEY, ok, 0.1) == [PassUp("branch", ok, upstream)]
    assert not layer.clients
    assert layer.receive_response(CLIENT_KEY, ok, 1.0) == [PassUp(None, ok, upstream)]  # the TU may be gone
    assert layer.receive_response(CLIENT_KEY, ok, 0.1 + TIMEOUT) is None  # Timer M


def test_a_non_invite_request_is_resent_doubling_up_to_t2_and_every_t2_once_proceeding() -> None:
    layer = TransactionLayer()
    request = make_request("MESSAGE", via="SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-sr2")
    key = ("z9hG4bK-sr2", "MESSAGE")
    layer.begin_client(key, request, UA, "branch", 0.0)
    times = [0.25 * n for n in range(1, 63)]
    resent = [now for now in times if layer.advance(now)]
    assert resent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    layer.receive_response(key, make_response(request, 100, "Trying"), 15.6)
    assert [now for now in (19.5, 23.5) if layer.advance(now)] == [19.5, 23.5]  # every T2
    layer.receive_response(key, make_response(request, 200, "OK"), 24.0)
    assert layer.advance(40.0) == [] and not layer.clients


def test_a_non_invite_request_unanswered_times_out_by_timer_f() -> None:
    layer = TransactionLayer()
    request = make_request("MESSAGE", via="SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK-sr3")
    layer.begin_client(("z9hG4bK-sr3", "MESSAGE"), request, UA_TCP, "branch", 0.0)
    assert layer.advance(TIMEOUT - 0.1) == []  # no retransmissions over TCP
    assert layer.advance(TIMEOUT) == [TimedOut("branch", "F")]


def test_a_transport_error_ends_the_transaction_and_tells_the_tu() -> None:
    layer = TransactionLayer()
    transaction, _ = layer.begin_client(CLIENT_KEY, client_invite(), UA, "branch", 0.0)
    assert layer.unsendable(transaction, 0.5) == [TimedOut("branch", "transport")] and not layer.clients


def test_a_tu_timer_fires_as_timed_out_and_a_cleared_one_never() -> None:
    layer = TransactionLayer()
    transaction, _ = layer.begin_client(CLIENT_KEY, client_invite(), UA, "branch", 0.0)
    layer.receive_response(CLIENT_KEY, make_response(client_invite(), 180, "Ringing", to_tag="b"), 0.1)
    layer.set_timer(transaction, "C", 180.0)
    layer.set_timer(transaction, "other", 90.0)
    layer.clear_timer(transaction, "other")
    # Neither the disarmed Timer A nor the cleared one wake anybody; a wake-up comes within a tick.
    assert 180.0 <= layer.next_deadline() <= 180.0 + 1 / TICKS_PER_SECOND
    assert layer.advance(179.0) == []
    assert layer.advance(180.0) == [TimedOut("branch", "C")]


# --- what is kept ------------------------------------------------------------------------------------

KEY = ("z9hG4bK1", "192.0.2.10:5060", "REGISTER")
OTHER = ("z9hG4bK2", "192.0.2.10:5060", "REGISTER")


def test_retired_transactions_are_bounded_oldest_first_and_invisible_to_the_collector() -> None:
    layer = TransactionLayer(max_retained=3)
    for n in range(5):
        key = (f"z9hG4bK{n}", "192.0.2.10:5060", "REGISTER")
        layer.respond(layer.begin_server(key, "REGISTER", UA), 200, b"200", float(n))
    assert [key[0] for key in layer.answered] == ["z9hG4bK2", "z9hG4bK3", "z9hG4bK4"]
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in layer.answered.values())


def test_keys_from_real_requests_drive_the_layer() -> None:
    layer = TransactionLayer()
    request = make_request()
    key = transaction_key(request)
    answer = make_response(request, 200, "OK", to_tag="t").to_bytes()
    layer.respond(layer.begin_server(key, request.method, UA), 200, answer, 1.0)
    retransmission = make_request()
    assert sent(layer.receive_request(transaction_key(retransmission), "REGISTER", 2.0)) == [answer]
    assert isinstance(make_response(request, 200, "OK"), Response)


def test_timers_that_never_fire_do_not_pile_up() -> None:
    layer = TransactionLayer()
    for n in range(10_000):  # each with a 15-minute timer, cleared at once, like the proxy's safety net
        transaction = layer.begin_server((f"z9hG4bK{n}", "h:5060", "INVITE"), "INVITE", UA)
        layer.set_timer(transaction, "safety net", float(n) + 900.0)
        layer.respond(transaction, 200, b"200", float(n))
    assert not any(layer._timers._buckets.values())  # else 10,000 transactions kept until the first is due
    assert layer.next_deadline() is None


def test_what_has_expired_is_swept_as_more_retire_with_no_timer_running() -> None:
    layer = TransactionLayer()
    for n in range(EXPIRE_EVERY):  # a REGISTER load: Timer J's 32 s is all they have left
        key = (f"z9hG4bK-old-{n}", "192.0.2.10:5060", "REGISTER")
        layer.respond(layer.begin_server(key, "REGISTER", UA), 200, b"200", 0.0)
    for n in range(EXPIRE_EVERY):
        key = (f"z9hG4bK-new-{n}", "192.0.2.10:5060", "REGISTER")
        layer.respond(layer.begin_server(key, "REGISTER", UA), 200, b"200", TIMEOUT + 1)
    assert len(layer.answered) == EXPIRE_EVERY and all(key[0].startswith("z9hG4bK-new") for key in layer.answered)
