"""The connection table's policies: idle connections close, connections with live bindings stay,
connections are limited per source address and in total, and a message begun must be whole in time."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from registrar.metrics import Metrics
from registrar.model import ConnectionLimits, SecurityPolicy, SourceLimits
from registrar.sip.message import StreamFramer
from registrar.sip.source import Source
from registrar.service import SipService
from registrar.source_limits import SourceLimiter
from registrar.sip.transaction import TransactionLayer
from registrar.transport import FLOW_GRACE, IDLE_TIMEOUT, SipEndpoint, StreamProtocol
from tests.helpers import FakeClock


class FakeWriter:
    def __init__(self, peer: tuple[str, int] = ("192.0.2.1", 40000)) -> None:
        self.peer = peer
        self.closed = False
        self.aborted = False
        self.written: list[bytes] = []

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str) -> object:
        return self.peer if name == "peername" else None


class Policy:
    """The served catalogue's security policy, replaceable as a catalogue swap replaces it."""

    def __init__(self, **limits: float) -> None:
        self.current = SecurityPolicy(connections=ConnectionLimits(**limits))  # type: ignore[arg-type]

    def __call__(self) -> SecurityPolicy:
        return self.current


def endpoint(clock: FakeClock, policy: Policy | None = None) -> SipEndpoint:
    # OPTIONS to us is answered without a registrar.
    policy = policy or Policy()
    return SipEndpoint(SipService(None), Metrics(), SourceLimiter(policy), policy, TransactionLayer(), clock=clock)  # type: ignore[arg-type]


def test_a_connection_without_bindings_closes_after_the_idle_timeout() -> None:
    clock = FakeClock(1000.0)
    table = endpoint(clock)
    writer = FakeWriter()
    flow = table.open_flow("tcp", writer, ("127.0.0.1", 40000))  # type: ignore[arg-type]

    clock.now += IDLE_TIMEOUT - 1
    table.close_idle_flows()
    assert not writer.closed and flow.id in table.flows

    clock.now += 2
    table.close_idle_flows()
    assert writer.closed and flow.id not in table.flows


def test_traffic_restarts_the_idle_timer() -> None:
    clock = FakeClock(1000.0)
    table = endpoint(clock)
    writer = FakeWriter()
    flow = table.open_flow("tls", writer, ("127.0.0.1", 40001))  # type: ignore[arg-type]
    clock.now += IDLE_TIMEOUT - 1
    flow.last_activity = clock.now  # what StreamProtocol.data_received does
    clock.now += IDLE_TIMEOUT - 1
    table.close_idle_flows()
    assert not writer.closed


def test_a_connection_lives_as_long_as_the_bindings_made_over_it() -> None:
    clock = FakeClock(1000.0)
    table = endpoint(clock)
    writer = FakeWriter()
    flow = table.open_flow("tcp", writer, ("127.0.0.1", 40002))  # type: ignore[arg-type]
    table.keep_flow(flow.id, clock.now + 3600)

    clock.now += 3600 + FLOW_GRACE - 1
    table.close_idle_flows()
    assert not writer.closed

    clock.now += 2
    table.close_idle_flows()
    assert writer.closed


def test_connection_gauge_follows_open_and_close() -> None:
    clock = FakeClock(1000.0)
    table = endpoint(clock)
    flow = table.open_flow("tcp", FakeWriter(), ("127.0.0.1", 40003))  # type: ignore[arg-type]
    gauge = table.metrics.connections.labels("tcp")
    assert gauge._value.get() == 1
    table.close_flow(flow)
    table.close_flow(flow)  # closing twice (idle sweep, then connection_lost) counts once
    assert gauge._value.get() == 0


def refused(table: SipEndpoint, reason: str) -> float:
    return table.metrics.registry.get_sample_value("sipreg_connections_refused_total", {"reason": reason})


def test_connections_are_limited_per_source_address() -> None:
    table = endpoint(FakeClock(), Policy(per_source=2, total=10))
    assert table.admit_connection("tcp", "192.0.2.1") and table.admit_connection("tls", "192.0.2.1")
    assert not table.admit_connection("tcp", "192.0.2.1")
    assert table.admit_connection("tcp", "192.0.2.2")  # another address has its own count
    assert refused(table, "per_source") == 1 and refused(table, "total") == 0

    table.release_connection("192.0.2.1")
    assert table.admit_connection("tcp", "192.0.2.1")
    assert table.accepted_total == 3


def test_an_ipv6_source_is_its_64() -> None:
    table = endpoint(FakeClock(), Policy(per_source=2))
    assert table.admit_connection("tcp", "2001:db8:1:2::10") == table.admit_connection("tcp", "2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert not table.admit_connection("tcp", "2001:db8:1:2::3")
    assert table.admit_connection("tcp", "2001:db8:1:3::10")


def test_connections_are_limited_in_total_even_from_trusted_networks() -> None:
    policy = Policy(per_source=1, total=3)
    policy.current = replace(policy.current, trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    table = endpoint(FakeClock(), policy)
    assert table.admit_connection("tcp", "192.0.2.1")
    assert not table.admit_connection("tcp", "192.0.2.1")
    # A load balancer's address is held to the total only.
    assert table.admit_connection("tcp", "10.1.2.3") and table.admit_connection("tcp", "10.1.2.3")
    assert table.accepted_total == 3
    assert not table.admit_connection("tcp", "10.1.2.3")
    assert not table.admit_connection("tcp", "192.0.2.9")
    assert refused(table, "per_source") == 1 and refused(table, "total") == 2


def test_the_limits_are_read_from_the_current_policy() -> None:
    policy = Policy(per_source=1)
    table = endpoint(FakeClock(), policy)
    assert table.admit_connection("tcp", "192.0.2.1")
    assert not table.admit_connection("tcp", "192.0.2.1")
    policy.current = SecurityPolicy(connections=ConnectionLimits(per_source=2))  # a new catalogue
    assert table.admit_connection("tcp", "192.0.2.1")


def accepted_protocol(table: SipEndpoint, peer: tuple[str, int] = ("192.0.2.1", 40000)) -> tuple[StreamProtocol, FakeWriter]:
    protocol = StreamProtocol(table, "tcp", accepted=True)
    writer = FakeWriter(peer)
    protocol.connection_made(writer)  # type: ignore[arg-type]
    return protocol, writer


def test_an_accepted_connection_over_the_limit_is_closed_at_once_and_a_closed_one_frees_its_place() -> None:
    table = endpoint(FakeClock(), Policy(per_source=1))
    first, first_writer = accepted_protocol(table)
    second, second_writer = accepted_protocol(table, ("192.0.2.1", 40001))
    assert second_writer.aborted and second.flow is None
    assert not first_writer.closed and first.flow is not None

    first.connection_lost(None)
    second.connection_lost(None)  # the refused one was never counted: nothing to give back
    assert table.accepted_total == 0 and not table.flows
    third, third_writer = accepted_protocol(table, ("192.0.2.1", 40002))
    assert not third_writer.closed and third.flow is not None


def test_connections_we_open_are_not_counted() -> None:
    table = endpoint(FakeClock(), Policy(per_source=1, total=1))
    for port in (5060, 5061):
        protocol = StreamProtocol(table, "tcp")  # what SipEndpoint.connect makes
        protocol.connection_made(FakeWriter(("192.0.2.1", port)))  # type: ignore[arg-type]
        assert protocol.flow is not None
    assert table.accepted_total == 0
    assert table.admit_connection("tcp", "192.0.2.1")


OPTIONS = (
    b"OPTIONS sip:sip.example.test SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK-1\r\n"
    b"From: <sip:probe@sip.example.test>;tag=1\r\nTo: <sip:sip.example.test>\r\nCall-ID: deadline\r\n"
    b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def test_a_message_dripped_byte_by_byte_is_cut_off_at_the_deadline() -> None:
    clock = FakeClock(1000.0)
    table = endpoint(clock, Policy(message_seconds=10))
    protocol, writer = accepted_protocol(table)
    protocol.data_received(OPTIONS[:1])
    for byte in OPTIONS[1:3]:  # a byte every 4 s: traffic enough for the idle timeout
        clock.advance(4)
        protocol.data_received(bytes([byte]))
        table.close_slow_flows()
    assert not writer.closed  # 8 s since the first byte
    clock.advance(2.5)
    table.close_slow_flows()
    assert writer.aborted and protocol.flow is not None and protocol.flow.id not in table.flows


def test_each_message_has_its_own_deadline() -> None:
    clock = FakeClock(1000.0)
    table = endpoint(clock, Policy(message_seconds=10))
    protocol, writer = accepted_protocol(table)
    protocol.data_received(OPTIONS[:50])
    clock.advance(8)
    # The first message ends and a second begins in one segment: its clock starts now.
    protocol.data_received(OPTIONS[50:] + OPTIONS[:50])
    assert writer.written and writer.written[0].startswith(b"SIP/2.0 200 OK")
    clock.advance(8)
    table.close_slow_flows()
    assert not writer.closed
    protocol.data_received(OPTIONS[50:])
    clock.advance(60)  # nothing held: no deadline (the idle timeout is another matter)
    table.close_slow_flows()
    assert not writer.closed


def test_keep_alives_are_whole_messages() -> None:
    clock = FakeClock(1000.0)
    table = endpoint(clock, Policy(message_seconds=10))
    protocol, writer = accepted_protocol(table)
    # A CRLF may be the first half of a ping: held, but no message begun.
    for _ in range(5):
        protocol.data_received(b"\r\n")
        clock.advance(20)
        table.close_slow_flows()
    assert not writer.closed
    assert writer.written == [b"\r\n", b"\r\n"]  # pongs for the two pings the CRLFs made up


def test_the_message_deadline_is_read_from_the_current_policy() -> None:
    clock = FakeClock(1000.0)
    policy = Policy(message_seconds=10)
    table = endpoint(clock, policy)
    protocol, writer = accepted_protocol(table)
    protocol.data_received(OPTIONS[:10])
    clock.advance(5)
    table.close_slow_flows()
    assert not writer.closed
    policy.current = SecurityPolicy(connections=ConnectionLimits(message_seconds=2))
    table.close_slow_flows()
    assert writer.aborted


def test_a_source_banned_for_flooding_loses_its_connections_and_gets_no_new_one() -> None:
    policy = Policy()
    policy.current = SecurityPolicy(sources=SourceLimits(requests_per_second=1, burst=1, ban_after=1))
    table = endpoint(FakeClock(), policy)
    writer = FakeWriter()
    flow = table.open_flow("tcp", writer, ("192.0.2.9", 40000))  # type: ignore[arg-type]
    source = Source("tcp", "192.0.2.9", 40000, flow.id)
    options = (b"OPTIONS sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.9:40000;branch=z9hG4bK-1\r\n"
               b"From: <sip:a@192.0.2.9>;tag=1\r\nTo: <sip:192.0.2.1>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
               b"Content-Length: 0\r\n\r\n")
    for _ in range(3):
        table.receive(options, source, writer.write)
    assert len(writer.written) == 1 and writer.aborted
    assert not table.admit_connection("tcp", "192.0.2.9") and refused(table, "banned") == 1
    assert table.admit_connection("tcp", "192.0.2.10")


def test_the_answers_to_the_messages_of_one_read_go_in_one_write_and_a_lone_message_is_answered_at_once() -> None:
    table = endpoint(FakeClock())
    protocol, writer = accepted_protocol(table)
    protocol.data_received(OPTIONS)
    assert len(writer.written) == 1 and writer.written[0].startswith(b"SIP/2.0 200 OK")
    # A busy connection: three requests and a keep-alive ping arrive in one read.
    protocol.data_received(OPTIONS + b"\r\n\r\n" + OPTIONS.replace(b"Call-ID: ", b"Call-ID: 2") + OPTIONS)
    assert len(writer.written) == 2
    answers = [event for event in StreamFramer().feed(writer.written[1]) if isinstance(event, bytes)]
    assert [answer.split(b"\r\n", 1)[0] for answer in answers] == [b"SIP/2.0 200 OK"] * 3
    assert [answer.split(b"Call-ID: ")[1].split(b"\r\n")[0] for answer in answers] == [b"deadline", b"2deadline", b"deadline"]
    assert b"\r\n\r\n\r\nSIP/2.0 200 OK" in writer.written[1]  # the pong, between the first answer and the second
    assert table.metrics.registry.get_sample_value("sipreg_crlf_keepalives_total", {"transport": "tcp"}) == 1
