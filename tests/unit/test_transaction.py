"""Unit tests for registrar.sip.transaction: transaction keys and the server transaction table."""

from __future__ import annotations

import pytest

from registrar.sip.message import Request, make_response, parse_message
from registrar.sip.transaction import (
    COMPLETED_LIFETIME,
    MAGIC_COOKIE,
    ServerTransactions,
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


# --- ServerTransactions -------------------------------------------------------------------------------

KEY = ("z9hG4bK1", "192.0.2.10:5060", "REGISTER")
OTHER = ("z9hG4bK2", "192.0.2.10:5060", "REGISTER")


def test_lifecycle_new_then_in_progress_then_the_same_bytes_again() -> None:
    table = ServerTransactions()
    assert table.lookup(KEY, now=100.0) == "new"
    table.begin(KEY, now=100.0)
    assert table.lookup(KEY, now=100.1) == "in-progress"
    answer = make_response(make_request(), 200, "OK", to_tag="t").to_bytes()
    table.complete(KEY, answer, now=100.2)
    assert table.lookup(KEY, now=101.0) == answer
    assert table.lookup(KEY, now=120.0) is answer  # the very same bytes, every time
    assert table.lookup(OTHER, now=120.0) == "new"
    assert len(table) == 1


def test_completed_transactions_expire_after_the_lifetime() -> None:
    table = ServerTransactions(completed_lifetime=32.0)
    table.begin(KEY, now=10.0)
    table.complete(KEY, b"SIP/2.0 200 OK\r\n\r\n", now=11.0)
    # The lifetime counts from completion, not from the start.
    assert table.lookup(KEY, now=11.0 + 32.0 - 0.001) == b"SIP/2.0 200 OK\r\n\r\n"
    assert table.lookup(KEY, now=11.0 + 32.0) == "new"
    assert len(table) == 0


def test_default_lifetime_is_timer_j() -> None:
    # RFC 3261 17.2.2: Timer J = 64 * T1 = 32 s for unreliable transports.
    assert COMPLETED_LIFETIME == 32.0
    table = ServerTransactions()
    table.complete(KEY, b"x", now=0.0)
    assert table.lookup(KEY, now=31.9) == b"x"
    assert table.lookup(KEY, now=32.0) == "new"


def test_an_unfinished_transaction_is_forgotten_after_the_lifetime_too() -> None:
    table = ServerTransactions(completed_lifetime=5.0)
    table.begin(KEY, now=0.0)
    assert table.lookup(KEY, now=4.0) == "in-progress"
    assert table.lookup(KEY, now=5.0) == "new"


def test_expire_removes_only_what_is_due() -> None:
    table = ServerTransactions(completed_lifetime=10.0)
    table.complete(KEY, b"first", now=0.0)
    table.complete(OTHER, b"second", now=5.0)
    table.expire(now=10.0)
    assert len(table) == 1
    assert table.lookup(OTHER, now=14.9) == b"second"
    assert table.lookup(KEY, now=14.9) == "new"


def test_completing_refreshes_the_expiry_order() -> None:
    table = ServerTransactions(completed_lifetime=10.0)
    table.begin(KEY, now=0.0)
    table.begin(OTHER, now=1.0)
    table.complete(KEY, b"late answer", now=8.0)
    # OTHER (started at 1) is due before KEY (completed at 8): expiry must not stop at KEY.
    assert table.lookup(OTHER, now=12.0) == "new"
    assert table.lookup(KEY, now=12.0) == b"late answer"


def test_max_size_evicts_the_oldest_first() -> None:
    table = ServerTransactions(max_size=3)
    keys = [(f"z9hG4bK{n}", "192.0.2.10:5060", "REGISTER") for n in range(5)]
    for n, key in enumerate(keys):
        table.complete(key, f"answer {n}".encode(), now=float(n))
    assert len(table) == 3
    assert table.lookup(keys[0], now=5.0) == "new"
    assert table.lookup(keys[1], now=5.0) == "new"
    assert [table.lookup(key, now=5.0) for key in keys[2:]] == [b"answer 2", b"answer 3", b"answer 4"]


def test_keys_from_real_requests_drive_the_table() -> None:
    table = ServerTransactions()
    invite = make_request("INVITE", uri="sip:bob@example.com")
    ack = make_request("ACK", uri="sip:bob@example.com", cseq="1 ACK")
    table.begin(transaction_key(invite), now=0.0)
    table.complete(transaction_key(invite), b"SIP/2.0 486 Busy Here\r\n\r\n", now=0.5)
    # The ACK for a non-2xx final response belongs to the INVITE transaction and is absorbed by it.
    assert table.lookup(transaction_key(ack), now=0.6) == b"SIP/2.0 486 Busy Here\r\n\r\n"
    assert table.lookup(transaction_key(make_request("CANCEL", uri="sip:bob@example.com")), now=0.6) == "new"
