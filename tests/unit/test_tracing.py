"""The trace recorder: which ring a message goes to, what identifying a Call-ID moves, and every bound."""

from __future__ import annotations

import itertools

import pytest

from registrar.sip import trace as tracing
from registrar.sip.trace import Captured, TraceLimits, TraceRecorder
from registrar.trace_gathering import TraceGatherer
from tests.helpers import free_port

US = ("192.0.2.1", 5060)
PHONE = ("198.51.100.7", 40000)


def message(first_line: str, call_id: str, size: int = 0) -> bytes:
    return f"{first_line}\r\nCall-ID: {call_id}\r\nContent-Length: 0\r\n\r\n".encode() + b"x" * size


def recorder(**limits: int) -> TraceRecorder:
    """A recorder whose clock moves a millisecond at each message."""
    ticks = itertools.count(1000.0, 0.001)
    return TraceRecorder("node-1", TraceLimits(**limits), clock=lambda: next(ticks))


def lines(messages: list[Captured]) -> list[str]:
    return [tracing.first_line(captured) for captured in messages]


def test_a_challenged_first_register_joins_its_connections_trace_when_the_second_names_the_connection():
    trace = recorder()
    trace.received(message("REGISTER sip:example.test SIP/2.0", "c1"), "udp", PHONE, US, "c1")
    trace.sent(message("SIP/2.0 401 Unauthorized", "c1"), "udp", PHONE, US, "c1")
    assert trace.messages("alice@example.test") == []
    assert lines(trace.messages(PHONE[0])) == ["REGISTER sip:example.test SIP/2.0", "SIP/2.0 401 Unauthorized"]

    trace.received(message("REGISTER sip:example.test SIP/2.0", "c1"), "udp", PHONE, US, "c1")
    trace.identify("c1", "alice@example.test", PHONE[0])
    trace.sent(message("SIP/2.0 200 OK", "c1"), "udp", PHONE, US, "c1")

    kept = trace.messages("alice@example.test")
    assert lines(kept) == ["REGISTER sip:example.test SIP/2.0", "SIP/2.0 401 Unauthorized",
                           "REGISTER sip:example.test SIP/2.0", "SIP/2.0 200 OK"]
    assert [captured.received for captured in kept] == [True, False, True, False]
    assert kept[0].source == PHONE and kept[0].destination == US and kept[1].source == US
    assert trace.messages(PHONE[0]) == []  # moved, not copied


def test_another_call_ids_messages_stay_where_they_are():
    trace = recorder()
    trace.received(message("REGISTER sip:example.test SIP/2.0", "scan"), "udp", PHONE, US, "scan")
    trace.received(message("REGISTER sip:example.test SIP/2.0", "c1"), "udp", PHONE, US, "c1")
    trace.identify("c1", "alice@example.test", PHONE[0])
    assert len(trace.messages("alice@example.test")) == 1 and len(trace.messages(PHONE[0])) == 1


def test_a_call_between_two_of_our_connections_is_in_both_traces():
    trace = recorder()
    trace.received(message("INVITE sip:bob@example.test SIP/2.0", "call"), "udp", PHONE, US, "call")
    trace.identify("call", "alice@example.test", PHONE[0])
    trace.identify("call", "bob@example.test", PHONE[0])
    trace.sent(message("SIP/2.0 180 Ringing", "call"), "udp", PHONE, US, "call")
    assert lines(trace.messages("bob@example.test")) == ["SIP/2.0 180 Ringing"]
    assert lines(trace.messages("alice@example.test")) == ["INVITE sip:bob@example.test SIP/2.0", "SIP/2.0 180 Ringing"]


def test_a_ring_keeps_its_last_messages_within_its_count_and_bytes():
    trace = recorder(messages_per_connection=3, bytes_per_connection=10_000)
    trace.identify("c1", "alice@example.test", PHONE[0])
    for number in range(10):
        trace.received(message(f"OPTIONS sip:{number} SIP/2.0", "c1"), "udp", PHONE, US, "c1")
    assert lines(trace.messages("alice@example.test")) == [f"OPTIONS sip:{n} SIP/2.0" for n in (7, 8, 9)]
    trace.received(message("MESSAGE sip:big SIP/2.0", "c1", size=9_600), "udp", PHONE, US, "c1")
    assert lines(trace.messages("alice@example.test")) == ["MESSAGE sip:big SIP/2.0"]
    assert trace.size <= 10_000


def test_a_message_larger_than_its_ring_is_kept_cut_to_the_ring():
    trace = recorder(messages_per_address=4, bytes_per_address=2_000)
    trace.received(message("MESSAGE sip:big SIP/2.0", "c1", size=50_000), "udp", PHONE, US, "c1")
    (kept,) = trace.messages(PHONE[0])
    assert tracing.first_line(kept) == "MESSAGE sip:big SIP/2.0" and len(kept.data) <= 2_000
    assert trace.size <= 2_000


def test_made_up_usernames_from_many_addresses_cost_at_most_the_address_rings():
    trace = recorder(addresses=100, messages_per_address=4, bytes_per_address=4096, address_bytes=1 << 20)
    for number in range(10_000):
        peer = (f"203.0.113.{number % 250}", 5060)
        call_id = f"flood-{number}"
        trace.received(message(f"REGISTER sip:user{number}@example.test SIP/2.0", call_id), "udp", peer, US, call_id)
        trace.sent(message("SIP/2.0 401 Unauthorized", call_id), "udp", peer, US, call_id)
    assert trace.rings == 100
    assert trace.size <= 100 * 4096


def test_strangers_traffic_never_pushes_a_connections_trace_out():
    trace = recorder(address_bytes=3_000, bytes_per_address=2_000)
    trace.identify("c1", "alice@example.test", PHONE[0])
    trace.received(message("REGISTER sip:example.test SIP/2.0", "c1", size=1_000), "udp", PHONE, US, "c1")
    for number in range(100):
        peer = (f"203.0.113.{number}", 5060)
        trace.received(message("REGISTER sip:example.test SIP/2.0", f"x{number}", size=1_000), "udp", peer, US, None)
    assert trace.size <= 3_000 + 2_000
    assert len(trace.messages("alice@example.test")) == 1 and trace.messages("203.0.113.0") == []


def test_a_failed_connections_trace_outlives_the_others_traffic():
    trace = recorder(connection_bytes=10_000, failed_bytes=10_000)
    for user in ("alice", "bob"):
        trace.identify(user, f"{user}@example.test", PHONE[0])
        trace.received(message("REGISTER sip:example.test SIP/2.0", user), "udp", PHONE, US, user)
    trace.failed("alice@example.test")  # alice's REGISTER failed (a wrong password)
    trace.sent(message("SIP/2.0 401 Unauthorized", "alice"), "udp", PHONE, US, "alice")
    for number in range(200):  # everyone else's traffic, more than the connections' bytes
        trace.identify(f"c{number}", f"user{number}@example.test", PHONE[0])
        trace.received(message("REGISTER sip:example.test SIP/2.0", f"c{number}"), "udp", PHONE, US, f"c{number}")
    assert trace.messages("bob@example.test") == []
    assert lines(trace.messages("alice@example.test")) == ["REGISTER sip:example.test SIP/2.0",
                                                          "SIP/2.0 401 Unauthorized"]
    assert trace.size <= 20_000


def test_messages_since_a_time_are_the_newer_ones():
    trace = recorder()
    trace.identify("c1", "alice@example.test", PHONE[0])
    for _ in range(3):
        trace.received(message("OPTIONS sip:x SIP/2.0", "c1"), "udp", PHONE, US, "c1")
    first, *rest = trace.messages("alice@example.test")
    assert trace.messages("alice@example.test", since=first.time) == rest


def test_every_message_is_copied_as_it_is_recorded():
    copies: list[Captured] = []
    trace = TraceRecorder("node-1", copy=copies.append)
    trace.received(message("REGISTER sip:example.test SIP/2.0", "c1"), "tcp", PHONE, US, None)
    assert [(c.transport, c.source, c.destination, c.node) for c in copies] == [("tcp", PHONE, US, "node-1")]


def test_the_wire_form_round_trips_and_refuses_what_is_not_a_message():
    captured = Captured(1700000000.123456, "node-1", "tls", ("2001:db8::1", 5061), US, True, b"\x00REGISTER\xff")
    assert tracing.from_json(tracing.to_json(captured)) == captured
    for bad in ({}, {**tracing.to_json(captured), "data": "not base64!"}, {**tracing.to_json(captured), "source": 5}):
        with pytest.raises(ValueError):
            tracing.from_json(bad)


def test_a_summary_line_says_when_where_who_to_whom_over_what_and_the_first_line():
    captured = Captured(0.5, "node-1", "udp", ("2001:db8::1", 5062), US, True, message("REGISTER sip:a SIP/2.0", "c"))
    assert tracing.summary(captured) == (
        "1970-01-01 00:00:00.500000 node-1 [2001:db8::1]:5062 -> 192.0.2.1:5060 UDP REGISTER sip:a SIP/2.0"
    )
    assert tracing.as_text([captured], whole=True).splitlines()[1:3] == ["REGISTER sip:a SIP/2.0", "Call-ID: c"]


@pytest.mark.parametrize("text, key", [
    ("alice@Example.TEST", "alice@example.test"), ("sip:alice@example.test", "alice@example.test"),
    ("192.0.2.7", "192.0.2.7"), ("[2001:DB8::1]", "2001:db8::1"),
])
def test_a_trace_is_asked_for_by_aor_or_address(text, key):
    assert tracing.trace_key(text) == key


@pytest.mark.parametrize("text", ["alice", "@example.test", "alice@", "example.test", "999.1.1.1"])
def test_a_trace_key_that_is_neither_says_so(text):
    with pytest.raises(ValueError):
        tracing.trace_key(text)


async def test_a_node_that_does_not_answer_is_named_and_the_others_are_gathered():
    trace = recorder()
    trace.identify("c1", "alice@example.test", PHONE[0])
    trace.received(message("REGISTER sip:example.test SIP/2.0", "c1"), "udp", PHONE, US, "c1")
    closed = free_port()
    nodes = {
        "node-1": {"address": "127.0.0.1", "sipPort": 5060, "httpPort": closed},  # itself: read in place
        "node-2": {"address": "127.0.0.1", "sipPort": 5060, "httpPort": closed},
        "node-3": {"address": "127.0.0.1", "sipPort": 5060},  # serves no HTTP
    }
    gathered = await TraceGatherer(lambda: nodes, "t" * 20, trace, timeout=2).gather("alice@example.test")
    assert gathered.answered == ["node-1"] and len(gathered.messages) == 1
    assert set(gathered.unreachable) == {"node-2", "node-3"}
    assert gathered.unreachable["node-3"] == "serves no HTTP API"
