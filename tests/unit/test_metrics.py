"""Unit tests for the registrar's metrics: scrape-time series from the store and catalogue, INVITE and etcd error counts."""

from __future__ import annotations

import pytest
from aetcd import rpc

from registrar.metrics import STORE_OPERATIONS, Metrics, StoreCalls
from registrar.model import Binding, Catalog, Connection, Domain, RegistrationPolicy
from registrar.store.etcd_session import EtcdSession, EtcdUnavailable
from registrar.store.memory import MemoryStore
from tests.helpers import FakeClock, free_port

SERVED = "sip.example.test"
EMPTY = "empty.example.test"  # served, without connections
ELSEWHERE = "elsewhere.example.test"  # in the store (etcd holds every domain), served by other pods
START = 1_700_000_000.0


def catalog(*usernames: str) -> Catalog:
    policy = RegistrationPolicy(enabled=True)
    return Catalog(
        domains={SERVED: Domain(SERVED, policy), EMPTY: Domain(EMPTY, policy)},
        connections={(SERVED, user): Connection(SERVED, user, "ip", name=user) for user in usernames},
    )


def binding(aor: str, contact: str) -> Binding:
    return Binding(aor, contact, START + 600, "call", 1, source_host="192.0.2.1", source_port=5060,
                   registered_at=START)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_bindings_and_registered_connections_are_read_from_the_store_for_served_domains_only() -> None:
    store = MemoryStore(clock=FakeClock(START))
    served = catalog("alice", "bob", "carol")
    metrics = Metrics(store, lambda: served)
    await store.update(f"alice@{SERVED}", lambda _: [binding(f"alice@{SERVED}", "sip:a@h1"),
                                                      binding(f"alice@{SERVED}", "sip:a@h2")])
    await store.update(f"bob@{SERVED}", lambda _: [binding(f"bob@{SERVED}", "sip:b@h")])
    await store.update(f"dave@{ELSEWHERE}", lambda _: [binding(f"dave@{ELSEWHERE}", "sip:d@h")])

    assert sample(metrics, "sipreg_bindings", domain=SERVED) == 3
    assert sample(metrics, "sipreg_registered_connections", domain=SERVED) == 2
    assert sample(metrics, "sipreg_configured_connections", domain=SERVED) == 3
    assert sample(metrics, "sipreg_configured_connections", domain=EMPTY) == 0
    for name in ("sipreg_bindings", "sipreg_registered_connections", "sipreg_configured_connections"):
        assert sample(metrics, name, domain=ELSEWHERE) is None, name

    # The catalogue is replaced (a connection deleted): the next scrape counts the new one.
    served = catalog("alice")
    assert sample(metrics, "sipreg_configured_connections", domain=SERVED) == 1
    await store.update(f"bob@{SERVED}", lambda _: [])
    assert sample(metrics, "sipreg_registered_connections", domain=SERVED) == 1


def test_store_up_follows_the_store_readiness() -> None:
    class Store(MemoryStore):
        up = True

        @property
        def ready(self) -> bool:
            return self.up

    store = Store()
    metrics = Metrics(store, Catalog)
    assert sample(metrics, "sipreg_store_up") == 1
    store.up = False
    assert sample(metrics, "sipreg_store_up") == 0


def test_etcd_series_exist_from_the_start_with_an_etcd_store_only() -> None:
    calls = StoreCalls()
    etcd = Metrics(MemoryStore(), Catalog, store_calls=calls)
    assert sample(etcd, "sipreg_store_writes_total") == 0
    assert sample(etcd, "sipreg_store_write_duration_seconds_count") == 0
    for operation in STORE_OPERATIONS:
        assert sample(etcd, "sipreg_store_errors_total", operation=operation) == 0
    calls.written(0.003, aors=4, conflicts=1)
    calls.failed("watch")
    assert sample(etcd, "sipreg_store_writes_total") == 1
    assert sample(etcd, "sipreg_store_aors_written_total") == 4
    assert sample(etcd, "sipreg_store_conflicts_total") == 1
    assert sample(etcd, "sipreg_store_write_duration_seconds_bucket", le="0.0025") == 0
    assert sample(etcd, "sipreg_store_write_duration_seconds_bucket", le="0.005") == 1
    assert sample(etcd, "sipreg_store_errors_total", operation="watch") == 1
    assert sample(etcd, "sipreg_store_errors_total", operation="txn") == 0

    memory = Metrics(MemoryStore(), Catalog)
    assert sample(memory, "sipreg_store_writes_total") is None
    assert sample(memory, "sipreg_store_errors_total", operation="txn") is None
    assert sample(memory, "sipreg_store_up") == 1


def test_stream_connections_are_zero_before_the_first_one() -> None:
    metrics = Metrics()
    assert sample(metrics, "sipreg_connections", transport="tcp") == 0
    assert sample(metrics, "sipreg_connections", transport="tls") == 0


def test_invites_are_counted_by_domain_and_status_and_skipped_contacts_by_why() -> None:
    metrics = Metrics()
    assert sample(metrics, "sipreg_unreachable_contacts_total", why="node_gone") == 0
    metrics.invite_answered(SERVED, 480)
    metrics.invite_answered(SERVED, 480)
    metrics.invite_answered("other", 407)
    metrics.unreachable_contact("closed")
    metrics.unreachable_contact("some new reason")  # a label stays bounded
    assert sample(metrics, "sipreg_invites_total", domain=SERVED, status="480") == 2
    assert sample(metrics, "sipreg_invites_total", domain="other", status="407") == 1
    assert sample(metrics, "sipreg_unreachable_contacts_total", why="closed") == 2


async def test_failed_etcd_calls_are_counted_by_operation() -> None:
    """A real gRPC client against a port where nothing listens: every call fails at once."""
    failed: list[str] = []
    session = EtcdSession([("127.0.0.1", free_port())], on_error=failed.append)
    try:
        with pytest.raises(EtcdUnavailable):
            await session.txn(rpc.TxnRequest())
        assert failed == ["connect", "txn"]  # the txn found no etcd to connect to
        with pytest.raises(EtcdUnavailable):
            await session.read_prefix(b"/sipreg/")
        with pytest.raises(EtcdUnavailable):
            async for _ in session.watch([(b"/sipreg/", b"/sipreg0")], 1):
                pass
        with pytest.raises(EtcdUnavailable):
            await session.grant(10)
        assert failed == ["connect", "txn", "connect", "read", "connect", "watch", "connect", "lease"]
    finally:
        await session.close()
