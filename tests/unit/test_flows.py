"""The connection table's idle policy: unused connections close, connections with live bindings stay."""

from __future__ import annotations

from registrar.metrics import Metrics
from registrar.model import SecurityPolicy
from registrar.source_limits import SourceLimiter
from registrar.transport import FLOW_GRACE, IDLE_TIMEOUT, SipEndpoint
from tests.fakes import FakeClock

POLICY = SecurityPolicy()


class FakeWriter:
    def __init__(self) -> None:
        self.closed = False
        self.written: list[bytes] = []

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        self.written.append(data)


def endpoint(clock: FakeClock) -> SipEndpoint:
    return SipEndpoint(service=None, metrics=Metrics(), sources=SourceLimiter(lambda: POLICY), clock=clock)  # type: ignore[arg-type]


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
