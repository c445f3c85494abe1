"""make_store: what each --store brings with it (catalogue source, node registry, call counts) for the app."""

from __future__ import annotations

from registrar.app import ServeConfig, make_store
from registrar.model import Catalog, Domain, RegistrationPolicy
from registrar.store.memory import MemoryStore
from tests.helpers import free_port

DOMAIN = "sip.example.test"


def manifests() -> Catalog:
    return Catalog({DOMAIN: Domain(DOMAIN, RegistrationPolicy(enabled=True))}, {})


def test_the_memory_store_comes_with_the_manifests_catalogue_no_replicas_and_no_calls() -> None:
    served = manifests()
    parts = make_store(ServeConfig(catalog=served), on_catalog=lambda catalog: None)
    assert isinstance(parts.locations, MemoryStore)
    assert parts.catalog_source.catalog is served
    assert parts.node_registry.nodes == {}
    assert parts.calls is None  # so Metrics has no sipreg_store_* series but sipreg_store_up


def test_without_manifests_the_memory_store_serves_an_empty_catalogue() -> None:
    parts = make_store(ServeConfig(catalog=None), on_catalog=lambda catalog: None)
    assert parts.catalog_source.catalog.domains == {}


async def test_the_etcd_store_is_all_three_parts_and_counts_its_failed_calls() -> None:
    """Nothing listens at the etcd address: the store keeps trying, and each failed connect is counted."""
    served = manifests()
    parts = make_store(
        ServeConfig(catalog=served, store=f"etcd://127.0.0.1:{free_port()}", node="n1"), on_catalog=lambda catalog: None
    )
    store = parts.locations
    assert parts.catalog_source is store and parts.node_registry is store
    assert parts.catalog_source.catalog is served  # the manifests to publish, until etcd's is read
    await store.start(wait=0.5)
    try:
        assert not store.ready
        assert parts.calls is not None and parts.calls.failures["connect"] >= 1
    finally:
        await store.close()
